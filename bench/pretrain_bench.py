"""Continued-pretraining benchmark on the real SmolLM2-135M: does a setting adapt, and what does it cost?

    python bench/pretrain_bench.py [--method full] [--lr 3e-4] [--steps 40] [--replay 0.1] [--replay-source samples]
    python bench/pretrain_bench.py --data ../shared/data/corpus      # the shared (non-redistributable) corpus instead

Runs the pipeline's own corpus and pretrain stages (so it measures exactly what ``pipeline run``
does) and prints held-out domain perplexity before/after (goal: >= 20% lower), general perplexity
before/after on text that is never replayed (goal: <= 5% higher) and the training time. Each run
appends one JSON line to ``--results`` (default: bench/results/pretrain.jsonl).

Text: by default the embedded corpus (what ``make demo`` uses): domain = 10-K text (TAT-QA,
KPI-EDGAR) and SEC loan agreements (FIN NER), 281 training documents (193k tokens) and 82 held-out
documents, held out by the document ids the embedded task data carries; general perplexity = the
embedded held-out HH dialogues (hh_rlhf/general_heldout, 163 dialogues, never replayed); replay =
base-model samples (``--replay-source samples``) or the embedded HH replay dialogues (``embedded``:
another slice of HH, sharing no dialogue with the measured one).

Measured 2026-11-29, SmolLM2-135M, embedded corpus, blocks of 256 tokens, 64 held-out blocks per
perplexity (spread over all held-out documents), float32 on the shared 2-core CPU (other engineers'
jobs running: seconds are wall-clock training time under that load). See RESULTS below.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from domain_lm.pipeline.store import Run
from domain_lm.train.pretrain import BEFORE_FILE

REPO = Path(__file__).resolve().parents[1]

#: Filled in from bench/results/pretrain.jsonl after the runs (see the module docstring).
RESULTS = """
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="Shared corpus directory (../shared/data/corpus); default: the embedded corpus.")
    p.add_argument("--out", type=Path, default=Path("/tmp/pretrain-bench"), help="Run directory root.")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "pretrain.jsonl", help="Append one JSON line per run here.")
    p.add_argument("--name", default=None, help="Run name (default: from the settings).")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=float, default=0.05, help="Warmup ratio.")
    p.add_argument("--method", choices=["lora", "full"], default="full")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--train-embeddings", action="store_true", help="LoRA: also train embeddings and LM head.")
    p.add_argument("--top-layers", type=int, default=None, help="Train only the top N layers (LoRA or full).")
    p.add_argument("--replay", type=float, default=0.1, help="Replay fraction of general text.")
    p.add_argument("--replay-source", choices=["samples", "embedded"], default="samples")
    p.add_argument("--replay-samples", type=int, default=16, help="Base-model samples for replay (samples source).")
    p.add_argument("--eval-blocks", type=int, default=64, help="Held-out blocks per perplexity measurement.")
    return p.parse_args()


def shared_sources(data: Path) -> list[dict]:
    """The shared development corpus (earnings calls, FOMC): a path given at run time, never committed."""
    out = []
    for sub, n in [("en_ectsum_train", 120), ("en_fomc/meeting_minutes", 40), ("en_fomc/press_conference", 40)]:
        if (data / sub).exists():
            out.append({"path": str(data / sub), "format": "txt", "lang": "en", "max_docs": n})
    return out


def reuse_perplexity_before(cfg, root: Path) -> Path:
    """Perplexity before training depends only on the base model, the corpus and the held-out
    blocks: put an earlier run's into this run's work dir (as the stage leaves it after measuring)
    so each bench run measures only the perplexity after. Returns the shared file."""
    from domain_lm.core.hashing import sha256_json
    from domain_lm.pipeline.run import fingerprint, stage_inputs

    run = Run.from_config(cfg)
    inputs = stage_inputs("pretrain", run)
    key = sha256_json([cfg.base_model.name, inputs.results["corpus"].fingerprint, cfg.pretrain.eval_max_blocks])[:16]
    shared = root / f"perplexity-before-{key}.json"
    if shared.is_file():
        work = run.work_dir("pretrain")
        (work / "FINGERPRINT").write_text(fingerprint("pretrain", cfg, inputs))
        shutil.copy(shared, work / BEFORE_FILE)
    return shared


def main() -> int:
    args = parse_args()
    from domain_lm.config import build_config
    from domain_lm.pipeline.run import run_stage

    corpus: dict = {"block_size": args.block_size, "general_replay": args.replay_source}
    if args.data is not None:
        if not args.data.is_dir():
            print(f"SKIP: corpus directory {args.data} not found.")
            return 0
        corpus.update(sources=shared_sources(args.data), heldout_fraction=0.1, min_chars=150)
    peft: dict = {"method": args.method, "top_layers": args.top_layers}
    if args.method == "lora":
        peft["lora"] = {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0}
    settings = (
        f"{args.method}{'' if args.method == 'full' else f' r{args.lora_r}'}"
        f"{f' top{args.top_layers}' if args.top_layers else ''}{' +emb' if args.train_embeddings else ''} lr {args.lr:g}, "
        f"{args.steps} x {args.batch_size} x {args.block_size}, replay {args.replay:g} {args.replay_source}"
    )
    name = args.name or "bench-" + "-".join(settings.replace(",", "").split())
    cfg = build_config(
        {
            "run": {"name": name, "output_dir": str(args.out)},
            "base_model": {"name": args.model},
            "corpus": corpus,
            "pretrain": {
                "peft": peft,
                "train_embeddings": args.train_embeddings,
                "replay_fraction": args.replay,
                "replay_samples": args.replay_samples,
                "eval_max_blocks": args.eval_blocks,
                "train": {
                    "max_steps": args.steps, "batch_size": args.batch_size, "max_seq_len": args.block_size, "learning_rate": args.lr,
                    "save_steps": args.steps, "logging_steps": max(1, args.steps // 8), "warmup_ratio": args.warmup,
                },
            },
        }
    )
    t0 = time.time()
    for stage in ("base", "corpus"):
        res, _ = run_stage(stage, cfg)
    t_corpus = time.time() - t0
    sources = json.loads((res.path / "sources.json").read_text())
    before = reuse_perplexity_before(cfg, args.out)
    t0 = time.time()
    res, _ = run_stage("pretrain", cfg, force=True)
    if not before.is_file():
        shutil.copy(Run.from_config(cfg).work_dir("pretrain") / BEFORE_FILE, before)
    m = res.metrics
    dom, gen = m["ppl_domain_change_pct"], m.get("ppl_general_change_pct", float("nan"))
    row = {
        "settings": settings, "domain_change_pct": dom, "general_change_pct": gen, "train_seconds": m["train_seconds"],
        "stage_seconds": round(time.time() - t0, 1), "tokens_per_s": round(m.get("tokens_per_s", float("nan")), 1),
        "ppl_domain": [round(m["ppl_domain_before"], 3), round(m["ppl_domain_after"], 3)],
        "ppl_general": [round(m["ppl_general_before"], 3), round(m["ppl_general_after"], 3)],
        "trainable_params": m["trainable_params"], "corpus": "shared" if args.data else "embedded", "sources": sources,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print("\n=== pretrain bench ===")
    print(f"{settings}; corpus stage {t_corpus:.0f}s")
    print(f"domain  perplexity ({sources['domain']}, held-out docs): {m['ppl_domain_before']:.3f} -> {m['ppl_domain_after']:.3f} "
          f"({dom:+.1f}%)  goal <= -20%: {'PASS' if dom <= -20 else 'MISS'}")
    print(f"general perplexity ({sources['general_heldout']}): {m['ppl_general_before']:.3f} -> {m['ppl_general_after']:.3f} "
          f"({gen:+.1f}%)  goal <= +5%: {'PASS' if gen <= 5 else 'MISS'}")
    print(f"training: {m['train_seconds']:.0f}s, {m.get('tokens_per_s', float('nan')):.0f} tokens/s; stage {row['stage_seconds']:.0f}s")
    print(f"stage dir: {res.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
