"""The scorecard: every task x system with a 95% bootstrap interval, and two verdicts per task.

* **Does the domain model beat the base model?** The final model (the most refined stage scored)
  minus the base model, paired bootstrap over the held-out examples: "yes" when the 95% interval
  of the difference is above zero, "worse" when below, else "no" (within noise). Whether the two
  systems' own intervals overlap is reported too (the stricter, unpaired reading).
* **Does the task need an LLM?** The final model minus the classical baseline (TF-IDF + logistic
  regression, label tasks): "yes" only when the model is better beyond noise; otherwise the
  baseline is as good or better and the answer is "no". Tasks with structured answers (entities,
  extraction) have no classical baseline: "n/a".

Pure functions over typed gold values and predictions; the eval stage stores the result in its
``report.json`` (key ``scorecard``) and the run report opens with it.
"""

from __future__ import annotations

from typing import Any, Sequence

from domain_lm.eval.bootstrap import N_BOOT, Comparison, ExampleStats, compare, example_stats, interval, resample_counts
from domain_lm.tasks.metrics import PRIMARY

BASELINE = "baseline (tf-idf+lr)"

#: Column headings of the scorecard, by system.
LABELS = {
    "base": "base",
    "pretrain": "after CPT",
    "sft": "after SFT",
    "ppo": "after RLHF (PPO)",
    "dpo": "after RLHF (DPO)",
    BASELINE: "classical baseline",
}


def _cmp(c: Comparison) -> dict[str, float]:
    return {"diff": c.diff, "low": c.low, "high": c.high, "p_not_better": c.p_not_better}


def task_scorecard(
    template: Any,
    gold: Sequence[Any],
    predictions: dict[str, Sequence[Any | None]],
    final: str | None,
    seed: int = 42,
    lang: str | None = None,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """One task's row: per system ``{"score", "low", "high"}`` and the two verdicts.

    ``gold`` and ``predictions`` are typed values (``None``: the answer broke the contract); the
    template's contract picks the part its metric compares. ``final`` names the domain model
    (None: no verdicts). The same seeded resamples serve every system (paired comparisons).
    """
    metric = template.metric
    out = template.output
    g = [out.metric_value(v, metric) for v in gold]
    stats: dict[str, ExampleStats] = {}
    for system, preds in predictions.items():
        p = [None if v is None else out.metric_value(v, metric) for v in preds]
        stats[system] = example_stats(metric, g, p, labels=out.classes, lang=lang)
    counts = resample_counts(len(g), n_boot, seed)
    cells = {}
    for system, st in stats.items():
        lo, hi = interval(st.values(counts))
        cells[system] = {"score": st.value(), "low": lo, "high": hi}
    row: dict[str, Any] = {
        "task": template.name,
        "metric": metric,
        "metric_name": PRIMARY.get(metric, metric),
        "n": len(g),
        "cells": cells,
        "final": final,
    }
    if final is not None and final in stats and "base" in stats and final != "base":
        c = compare(stats[final], stats["base"], counts)
        overlap = cells[final]["low"] <= cells["base"]["high"] and cells["base"]["low"] <= cells[final]["high"]
        answer = "yes" if c.better else "worse" if c.worse else "no"
        row["beats_base"] = {"answer": answer, "intervals_overlap": overlap, **_cmp(c)}
    if final is not None and final in stats:
        if BASELINE in stats:
            c = compare(stats[final], stats[BASELINE], counts)
            row["needs_llm"] = {"answer": "yes" if c.better else "no", **_cmp(c)}
        else:
            row["needs_llm"] = {"answer": "n/a", "why": "no classical baseline for this output kind"}
    return row


def final_system(systems: Sequence[str], order: Sequence[str]) -> str | None:
    """The most refined of ``systems`` by ``order`` (most refined first); None if only the base."""
    return next((s for s in order if s in systems and s != "base"), None)


# --------------------------------------------------------------------------- rendering


def _cell(c: dict[str, float] | None) -> str:
    if c is None:
        return "–"
    return f"{c['score']:.3f} [{c['low']:.2f}, {c['high']:.2f}]"


def beats_base_text(row: dict[str, Any]) -> str:
    v = row.get("beats_base")
    if v is None:
        return "–"
    sign = f"{v['diff']:+.3f} [{v['low']:+.2f}, {v['high']:+.2f}]"
    words = {"yes": "**yes**", "no": "no (within noise)", "worse": "**no, worse**"}[v["answer"]]
    apart = "" if v["answer"] != "yes" else ("; intervals overlap" if v["intervals_overlap"] else "; intervals apart")
    return f"{words}: {sign}{apart}"


def needs_llm_text(row: dict[str, Any]) -> str:
    v = row.get("needs_llm")
    if v is None:
        return "–"
    if v["answer"] == "n/a":
        return f"n/a ({v['why']})"
    sign = f"{v['diff']:+.3f} [{v['low']:+.2f}, {v['high']:+.2f}]"
    if v["answer"] == "yes":
        return f"**yes**: model beats the baseline by {sign}"
    return f"**no**: the classical baseline is as good or better (model {sign})"


def systems_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Systems in column order: the stages as they appear, the baseline last."""
    seen: list[str] = []
    for row in rows:
        seen += [s for s in row["cells"] if s not in seen]
    return [s for s in seen if s != BASELINE] + ([BASELINE] if BASELINE in seen else [])


def markdown(scorecard: dict[str, Any]) -> str:
    """The scorecard as one markdown table and a legend."""
    rows = scorecard.get("rows", [])
    systems = systems_of(rows)
    head = ["task", "metric", "held-out n", *(LABELS.get(s, s) for s in systems), "domain model beats base?", "needs an LLM?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        task = row["task"] + (" (synthetic data)" if row.get("synthetic") else "")
        cells = [_cell(row["cells"].get(s)) for s in systems]
        lines.append(f"| {task} | {row['metric_name']} | {row['n']} | " + " | ".join(cells)
                     + f" | {beats_base_text(row)} | {needs_llm_text(row)} |")
    final = next((r["final"] for r in rows if r.get("final")), None)
    legend = (
        f"Cells: score [95% bootstrap interval] ({scorecard.get('n_boot', N_BOOT)} seeded resamples of the held-out examples, "
        f"seed {scorecard.get('seed')}). Held-out examples come from documents no training stage saw. "
        + (f"The domain model is `{final}`; " if final else "")
        + "its comparisons are paired bootstraps (difference [95% interval]): *yes* only when the interval is above zero."
    )
    notes = [f"- {n}" for n in scorecard.get("notes", [])]
    return "\n".join(lines) + "\n\n" + legend + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def compact_lines(scorecard: dict[str, Any]) -> list[str]:
    """A narrow plain-text scorecard for the console: one line per task."""
    rows = scorecard.get("rows", [])
    systems = systems_of(rows)
    short = {"pretrain": "cpt", BASELINE: "baseline"}
    out = []
    for row in rows:
        cells = "  ".join(
            f"{short.get(s, s)} {row['cells'][s]['score']:.2f}±{(row['cells'][s]['high'] - row['cells'][s]['low']) / 2:.2f}"
            for s in systems
            if s in row["cells"]
        )
        beats = row.get("beats_base", {}).get("answer", "–")
        llm = row.get("needs_llm", {}).get("answer", "–")
        out.append(f"{row['task']:<16} {row['metric_name']:<12} n={row['n']:<4} {cells}  | beats base: {beats}, needs LLM: {llm}")
    return out
