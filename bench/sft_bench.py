"""SFT benchmark: every bundled bank task in English and Chinese, before and after multi-task LoRA SFT.

Bench tasks (``benchlib.TASKS``; data read from ``--data``, default ``../shared/data``, nothing copied):

  sentiment_en   Financial PhraseBank                           -> ``sentiment``       weighted F1 (+ TF-IDF + LR)
  entities_en    FiNER-ORD + FIN NER, scored on FiNER-ORD        -> ``entities``        entity F1
  extraction_en  TAT-QA numeric spans + KPI-EDGAR + NLU++,       -> ``extraction``      value match (numeric span), exact match
                 scored on TAT-QA
  summary_en     ECTSum (figure-bearing transcript sentences)    -> ``report_summary``  ROUGE-L (+ lead-3)
  key_points_en  ECTSum bullets as performance points            -> ``key_points``      ROUGE-L
  sentiment_zh   BBT-FinCUGE FinFE                               -> ``sentiment``       weighted F1 (+ character TF-IDF + LR)
  entities_zh    CLUENER (organisations, people, places)         -> ``entities``        entity F1
  summary_zh     BBT-FinCUGE FinNA                               -> ``report_summary``  character ROUGE-L (+ lead-1)

English runs on SmolLM2-135M, Chinese on Gemma 3 270M. Each language's tasks are trained together
(task-balanced: the same number of records per task) in one LoRA run. Every split is by document
(``benchlib``), the same held-out records score the base model, the SFT adapter, an RLHF model when
given (``--rlhf en=DIR``) and the classical baseline. Answers go through ``TaskRunner`` with the
output contract enforced as in the service (grounded entity and evidence spans included); invalid
answers count as wrong, and the table shows how many there were and how many ungrounded.

    flock /work/cpu.lock python bench/sft_bench.py --lang en                  # English, 1,000 records per task
    flock /work/cpu.lock python bench/sft_bench.py --lang zh --per-task 1000
    python bench/sft_bench.py --lang en --tasks entities_en --per-task 100 --epochs 1 --test-max 20   # a smoke run

Measured 2026-12-07 (2 cores; one task per run; [95% bootstrap interval], paired against the row named):

- ``--lang en --tasks entities_en --per-task 3000 --epochs 1 --test-max 100``: FiNER-ORD entity F1 base 0.000,
  SFT **0.709** [0.64, 0.77] (precision 0.73, recall 0.69; LOC 0.70, ORG 0.70, PER 0.74), 0 invalid, 0 ungrounded,
  375 steps, 18 min. With 100-200 records per task in a three-task mix it was 0.25-0.29 (``data_budget.py``).
- ``--lang en --tasks summary_en --per-task 200 --epochs 2``: ECTSum ROUGE-L base 0.097, SFT **0.224** [0.20, 0.25],
  lead-3 0.123 (SFT - lead-3 +0.10 [0.07, 0.13]), 60 held-out, 50 steps, 12 min. Every SFT summary repeated a
  line (ECTSum's own bullets nearly repeat each other); the text contract now drops repeated lines: the same
  generations parsed again score **0.258** [0.23, 0.29] (SFT - lead-3 +0.13 [0.10, 0.17]), 3.2 lines per summary, not 7.7.
- ``--lang en --tasks extraction_en --per-task 3000 --epochs 2`` (all 1,354 records): TAT-QA value match base 0.131,
  SFT 0.328 (value exact 0.31 [0.20, 0.43]), 61 held-out, 0 invalid, 0 ungrounded, 340 steps, 33 min (0.367 of 60
  before the question's year became the period input). Of 42 wrong values 14 quote the right table row and take
  another year's column: the row alone does not say which column is which. With each figure after its column
  label (``2019: 12,899 | 2018: 12,621``) and the table-lookup records (``tatqa_tables``), ``--per-task 3000
  --epochs 1`` (2,559 records, 320 steps, 53 min): base 0.167, SFT **0.633** (value exact 0.617 [0.50, 0.73];
  SFT - base +0.47 [0.35, 0.58]), 60 held-out, 0 invalid; field accuracy evidence 0.60, period 0.78, unit 0.58.
  1 answer was ungrounded (refused after its retry: a request whose period spans passed the grammar budget);
  with the period's ``overflow: shortest`` every request is enforced and the same adapter scores the same
  0.633 with 0 ungrounded.
  4 of 23 wrong values now quote the right row (14 of 42 before); the rest pick another row.
- ``--lang zh --tasks summary_zh --per-task 1000 --epochs 1``: FinNA character ROUGE-L base 0.189, SFT **0.440**
  [0.41, 0.48], lead-1 0.392 (SFT - lead-1 +0.05 [0.01, 0.09]), 150 held-out, 125 steps, 14 min.
- ``--lang zh --tasks sentiment_zh --test-max 200``: FinFE weighted F1 base 0.104, SFT 0.368 (400 records, 1 epoch,
  50 steps, 2 min) and 0.590 (2,000 records, 2 epochs, 500 steps, 22 min); character TF-IDF + LR 0.722 on the
  same 200 held-out records. ``--per-task 5000 --epochs 1 --test-max 300``: 0.649 (625 steps, 29 min) against
  base 0.082 and TF-IDF + LR 0.733 on 300 held-out: still rising with data, still below the baseline (it
  over-answers positive, 209 of 300 for 170 gold, and finds 23 of 67 neutral posts). All 8,536 training posts
  (``--per-task 9000 --epochs 1``, 1,067 steps, 74 min): 0.643, no better: the curve has flattened by 5,000.
  With ``--calibrate 600`` (every label scored, temperature and per-label bias fitted on 600 held-out posts
  outside the scored 300; ``DOMAIN_LM_BENCH_ENGINE=hf``, since vLLM's per-node scoring is slow on 2 cores):
  SFT 0.670 [0.62, 0.72] (+0.027 [-0.01, +0.06] over its plain answers; it now answers 169 / 65 / 66 positive /
  negative / neutral for 170 / 63 / 67 gold), TF-IDF + LR calibrated the same way 0.728. Still below the baseline.

Results are cells of ``benchlib`` (resumable); the SFT cell is the data-budget bench's cell of the
same N when both use the same ``--out`` and recipe. Writes ``<out>/sft_bench_<lang>.{json,md}``.
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
    ap.add_argument("--tasks", default=None,
                    help="Comma list of bench tasks (default: the language's mix; add key_points_en to score key points).")
    ap.add_argument("--per-task", type=int, default=1000, help="Training records per task (all when a task has fewer).")
    ap.add_argument("--rlhf", action="append", default=[],
                    help="LANG=DIR: also score this (merged) RLHF model, e.g. a pipeline run's ppo model.")
    ap.add_argument("--skip-base", action="store_true")
    ap.add_argument("--keep-adapter", action="store_true", help="Keep the SFT adapter in <out>/cells/<cell>/adapter (to score it again).")
    ap.add_argument("--calibrate", type=int, default=0, metavar="N",
                    help="Label tasks: also score them as a taught task serves them, every label scored with the temperature and "
                         "per-label bias fitted on N held-out records outside the scored sample (the baseline too; keeps the adapter).")
    B.add_training_args(ap, "bench-sft")
    args = ap.parse_args()
    tasks, model, data, recipe = B.prepare(args, default_mix(args.lang))
    systems: dict[str, dict[str, dict[str, Any]]] = {}
    for t in tasks:
        b = B.cached(args.out / "baselines" / f"{t.key}-{args.seed}-{len(data[t.key].test)}.json",
                     lambda t=t: B.baseline(t, data[t.key], args.seed))
        if b is not None:
            systems.setdefault("baseline", {})[t.key] = b
    if not args.skip_base:
        systems["base"] = B.base_scores(model, tasks, data, args.out)
    counts = {t.key: min(args.per_task, len(data[t.key].train)) for t in tasks}
    cell_spec = B.Cell(f"{args.lang}-n{args.per_task}", counts, recipe)
    cell = B.run_cell(cell_spec, model, data, tasks, args.out, keep_adapter=args.keep_adapter or bool(args.calibrate))
    systems["sft"] = cell["scores"]
    if args.calibrate:
        adapter = args.out / "cells" / cell_spec.name() / "adapter"
        for t in tasks:
            if B.TASKS[t.key].baseline != "tfidf":
                continue
            if not adapter.is_dir():
                raise SystemExit(f"--calibrate needs the cell's adapter ({adapter}); run the cell again with --keep-adapter")
            both = B.cached(adapter.parent / f"calibrated-{t.key}-{args.calibrate}-{len(data[t.key].test)}.json",
                            lambda t=t: B.calibrated(model, t, data[t.key], adapter, args.calibrate))
            systems.setdefault("sft_calibrated", {})[t.key] = both["sft"]
            systems.setdefault("baseline_calibrated", {})[t.key] = both["baseline"]
    for spec in args.rlhf:
        lang, _, path = spec.partition("=")
        if lang == args.lang:
            systems["rlhf"] = B.cached(args.out / "rlhf" / f"{Path(path).resolve().parent.name}-{args.lang}.json",
                                       lambda path=path: B.evaluate(Path(path), tasks, {t.key: data[t.key].test for t in tasks}))
    write(args, tasks, data, systems, cell)


def write(args: argparse.Namespace, tasks: list[B.BenchTask], data: dict[str, B.TaskData], systems: dict[str, dict[str, dict[str, Any]]],
          cell: dict[str, Any]) -> None:
    order = [s for s in ("base", "sft", "sft_calibrated", "rlhf", "baseline", "baseline_calibrated") if s in systems]
    head = "| task | metric | held-out | train | " + " | ".join(order) + " | invalid (base / sft) | ungrounded answers (base / sft) |"
    lines = [head, "|" + "---|" * (len(order) + 6)]
    for t in tasks:
        vals = [f"{B.headline(t, systems[s][t.key]):.3f}" if t.key in systems[s] else "-" for s in order]
        scored = [systems[s].get(t.key, {}) for s in ("base", "sft") if s in systems]
        inv = " / ".join(str(sc.get("invalid", "-")) for sc in scored)
        ung = " / ".join(str(sc.get("grounding", {}).get("ungrounded_answers", "-")) for sc in scored)
        used = cell["examples_used"].get(t.key, 0)
        lines.append(f"| {t.key} | {t.headline} | {len(data[t.key].test)} of {data[t.key].held_out_total} | {used} | " + " | ".join(vals)
                     + f" | {inv} | {ung} |")
    extra = []
    for t in tasks:
        s = systems["sft"].get(t.key, {})
        if t.template == "extraction":
            extra.append(f"- {t.key}: value exact {s.get('value_exact', 0):.3f}, all fields exact {s.get('exact_match', 0):.3f}, "
                         f"field accuracy {s.get('field_accuracy', 0):.3f} (per field {json.dumps(s.get('per_field_accuracy', {}))})")
        if t.template == "entities":
            extra.append(f"- {t.key}: precision {s.get('precision', 0):.3f}, recall {s.get('recall', 0):.3f}, per type "
                         + ", ".join(f"{k} {v['f1']:.2f}" for k, v in s.get("per_type", {}).items()))
    for t in tasks:
        s = systems.get("sft_calibrated", {}).get(t.key)
        if s:
            c, b = s["calibration"], systems["baseline_calibrated"][t.key]
            lo, hi = s["ci"]
            d, dlo, dhi = s["vs_uncalibrated"]
            extra.append(f"- {t.key} calibrated on {c['dev']} held-out records outside the scored ones: SFT {s['weighted_f1']:.3f} "
                         f"[{lo:.2f}, {hi:.2f}] (uncalibrated {s['scored_uncalibrated']:.3f}; "
                         f"difference {d:+.3f} [{dlo:+.2f}, {dhi:+.2f}]), "
                         f"T {c['temperature']:.2f}, bias " + ", ".join(f"{k} {v:+.2f}" for k, v in c["bias"].items())
                         + f"; predicted {s['predicted']} for gold {s['gold']}; baseline calibrated {b['weighted_f1']:.3f} "
                         f"(uncalibrated {b['scored_uncalibrated']:.3f})")
    tr = cell["train"]
    md = (f"## SFT bench ({args.lang}: {Path(args.model or B.MODELS[args.lang]).name}, LoRA r={args.rank}, lr {args.lr:g}, "
          f"{args.epochs:g} epochs, {tr.get('steps')} steps, {tr.get('seconds', 0):.0f} s)\n\n"
          + "\n".join(lines) + "\n\n" + "\n".join(extra) + "\n")
    stem = args.out / f"sft_bench_{args.lang}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    summary = {"systems": systems, "train": tr, "examples_used": cell["examples_used"]}
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
