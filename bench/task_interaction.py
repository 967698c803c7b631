"""Task-interaction bench: does training on one bank task help or hurt the others?

Trains each task of the mix alone and all of them together (the same N training examples per task,
the same recipe), optionally also every leave-one-out mix, and scores every run on the held-out
records of every task (split by document). Prints:

* the score matrix: rows = what was trained (each task alone, all together, all but one), columns =
  the task scored, plus the untrained model;
* the interaction matrix: entry (i, j) is how much training on task i changes the score of task j.
  With ``--leave-one-out`` it is score(all)[j] - score(all but i)[j], task i's contribution inside
  the mix; without, score(i alone)[j] - score(base)[j] off the diagonal (transfer from i to j) and
  score(all)[j] - score(j alone)[j] on it (what the other tasks add to j).

    flock /work/cpu.lock python bench/task_interaction.py --lang en --per-task 300
    flock /work/cpu.lock python bench/task_interaction.py --lang zh --per-task 300 --leave-one-out

Measured 2026-12-07 (2 cores, SmolLM2-135M, ``--tasks sentiment_en,entities_en,extraction_en --per-task 100
--test-max 100``): entities 0.120 alone, 0.287 trained with the other two (+0.167); sentiment 0.686 alone,
0.662 together; extraction 0.283 alone, 0.250 together; entities alone lifts extraction by +0.050.

Writes ``<out>/task_interaction_<lang>.{json,md,png}`` (the png is the interaction matrix as a
heat map). Cells are resumable (``benchlib``): a rerun skips the runs already done; the
all-together run is shared with ``data_budget.py`` when both use the same ``--out``, N and recipe.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import benchlib as B  # noqa: E402 - the bench's own helpers, imported from this directory
from data_budget import default_mix  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lang", default="en", choices=["en", "zh"])
    ap.add_argument("--tasks", default=None, help="Comma list of bench tasks (default: the language's mix).")
    ap.add_argument("--per-task", type=int, default=300, help="Training examples per task in every run.")
    ap.add_argument("--leave-one-out", action="store_true", help="Also train every mix without one task (pairwise contributions).")
    B.add_training_args(ap, "bench-task-interaction")
    args = ap.parse_args()
    tasks, model, data, recipe = B.prepare(args, default_mix(args.lang))
    keys = [t.key for t in tasks]
    counts = {k: min(args.per_task, len(data[k].train)) for k in keys}
    rows: dict[str, dict[str, Any]] = {"base": {"scores": B.base_scores(model, tasks, data, args.out)}}
    # The all-together run first: it is the data-budget bench's cell for the same N.
    plan = [("all", counts)] + [(k, {k: counts[k]}) for k in keys]
    if args.leave_one_out:
        plan += [(f"all-{k}", {j: c for j, c in counts.items() if j != k}) for k in keys]
    label = {"all": f"{args.lang}-n{args.per_task}"}
    for name, mix in plan:
        rows[name] = B.run_cell(B.Cell(label.get(name, f"{args.lang}-{name}-n{args.per_task}"), mix, recipe), model, data, tasks, args.out)
        write(args, tasks, rows)


def matrices(
    tasks: list[B.BenchTask], rows: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float | None]]]:
    """(scores: trained -> scored task -> headline, interaction: task i -> task j -> change) from the runs done so far."""
    keys = [t.key for t in tasks]
    score = {name: {t.key: B.headline(t, r["scores"][t.key]) for t in tasks} for name, r in rows.items()}
    effect: dict[str, dict[str, float | None]] = {}
    for i in keys:
        effect[i] = {}
        for j in keys:
            if f"all-{i}" in score and "all" in score:
                effect[i][j] = score["all"][j] - score[f"all-{i}"][j] if i != j else score["all"][j] - score.get(j, {}).get(j, float("nan"))
            elif i == j:
                effect[i][j] = score["all"][j] - score[j][j] if "all" in score and j in score else None
            else:
                effect[i][j] = score[i][j] - score["base"][j] if i in score else None
    return score, effect


def write(args: argparse.Namespace, tasks: list[B.BenchTask], rows: dict[str, dict[str, Any]]) -> None:
    keys = [t.key for t in tasks]
    score, effect = matrices(tasks, rows)
    stem = args.out / f"task_interaction_{args.lang}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"lang": args.lang, "per_task": args.per_task, "scores": score, "interaction": effect,
                                                     "leave_one_out": args.leave_one_out}, indent=1), encoding="utf-8")
    head = "| trained on | " + " | ".join(f"{t.key} ({t.headline})" for t in tasks) + " |"
    sep = "|" + "---|" * (len(keys) + 1)
    lines = [head, sep] + [f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |" for name, s in score.items()]
    how = ("(i, j) = score(all)[j] - score(all but i)[j]; diagonal: score(all)[j] - score(j alone)[j]" if args.leave_one_out else
           "off the diagonal: score(i alone)[j] - score(base)[j]; diagonal: score(all)[j] - score(j alone)[j] (what the other tasks add)")
    inter = ["| effect of task (row) on task (column) | " + " | ".join(keys) + " |", sep] + [
        f"| {i} | " + " | ".join("-" if effect[i][j] is None else f"{effect[i][j]:+.3f}" for j in keys) + " |" for i in keys
    ]
    md = (f"## Task interaction ({args.lang}, {args.per_task} examples per task, {args.epochs:g} epochs)\n\nScores:\n\n" + "\n".join(lines)
          + f"\n\nInteraction ({how}):\n\n" + "\n".join(inter) + "\n")
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    plot(stem.with_suffix(".png"), keys, effect, args.lang)


def plot(path: Path, keys: list[str], effect: dict[str, dict[str, float | None]], lang: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([[np.nan if effect[i][j] is None else effect[i][j] for j in keys] for i in keys], dtype=float)
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.4 * len(keys) + 2.5, 1.1 * len(keys) + 1.6))
    im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_yticks(range(len(keys)), keys)
    ax.set_xlabel("task scored")
    ax.set_ylabel("task trained")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=8, color="white" if abs(v) > 0.6 * lim else "black")
    ax.set_title(f"How training on one task changes another ({lang})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
