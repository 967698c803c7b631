"""The eval stage's speed: answers per second before (one engine per stage, task by task) and after
(one engine, every stage a LoRA adapter, everything submitted at once, prefix caching), same answers.

    python bench/eval_speed.py [--run runs/demo] [--examples 200] [--variants before,after] [--out bench.json]

Models: the model stages of a finished run (``--run``: base, pretrain, sft, ppo/dpo as the pipeline
wrote them), or else a demo-shaped stack built here on SmolLM2-135M: three LoRA stages, each trained
(here: random, small) on the merged model of the one before, as the quick profile's pretrain, SFT
and PPO are (rank 16, top 8 / 8 / 4 layers). Data: the demo's held-out split (``records.load_split``
of the default config), ``--examples`` per task (seeded sample), the demo's four tasks.

Variants (each opens its engines, answers every task x stage, closes them; one after the other):
* ``before``: the eval stage as it was, run from that commit's code (``--before-ref``, a ``git archive``
  in a subprocess): ``harness.evaluate_model`` per stage, i.e. one engine per stage, task by task,
  batches of 64, vLLM's default CPU cache blocks of 128 tokens (no templated prefix is ever shared);
* ``after``: the eval stage now (``eval.engines.score_stages`` with the default ``eval.strategy`` and
  ``harness.engine_options``);
* ``swap`` / ``adapters`` / ``per_stage``: the stage now with that ``eval.strategy`` (one engine with
  each stage's weights loaded in place; LoRA adapters on one engine; one engine per stage);
* ``no-prefix``: as ``after`` with prefix caching off (what the prefix cache saves).

Prints answers, seconds (engine start + answering), answers/s and the ratio to ``before``.

Measured 2026-12-07 (2 cores, Xeon with AMX, the fresh-clone demo run, ``--examples 25``: 400 answers):
before 288 s (1.39 answers/s); after 70 s (engine start 31 s, answering 34 s): **4.09x**. The same day
before the vLLM worker got both cores and bf16 (``inference.vllm_engine``): after 102-128 s, 2.1-2.8x.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

#: The demo-shaped stack: stage, parent, LoRA rank, top layers adapted.
STACK = (("pretrain", "base", 16, 8), ("sft", "pretrain", 16, 8), ("ppo", "sft", 16, 4))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="A finished run directory (runs/<name>); default: a synthetic LoRA stack on --model.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", type=Path, default=Path("/tmp/eval-speed"), help="Where the synthetic stack is built (reused).")
    p.add_argument("--examples", type=int, default=200, help="Held-out examples per task.")
    p.add_argument("--variants", default="before,after", help="Comma-separated: before, after, swap, adapters, per_stage, no-prefix.")
    p.add_argument("--before-ref", default=BEFORE_REF, help="The commit whose eval stage is 'before'.")
    p.add_argument("--out", type=Path, help="Write the results as JSON here.")
    return p.parse_args()


def synthetic_stack(base: Path, work: Path) -> list[Any]:
    """Demo-shaped LoRA stages on ``base`` (random small adapters), built once under ``work``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from domain_lm.eval.engines import StageModel
    from domain_lm.models.loading import load_causal_lm, load_tokenizer, lora_config, merge_adapter

    models = {"base": base}
    out = [StageModel("base", base)]
    for i, (stage, parent, r, top) in enumerate(STACK):
        d = work / stage
        if not (d / "model" / "config.json").is_file():
            torch.manual_seed(i)
            model = load_causal_lm(models[parent])
            from domain_lm.config import LoraSection

            cfg: LoraConfig = lora_config(LoraSection(r=r, alpha=2 * r), model=model, top_layers=top)
            cfg.init_lora_weights = False
            peft = get_peft_model(model, cfg)
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.data *= 0.02  # a nudge, not noise: the stages still answer like the base
            peft.save_pretrained(d / "adapter")
            load_tokenizer(models[parent]).save_pretrained(d / "adapter")
            merge_adapter(d / "adapter", d / "model")
        models[stage] = d / "model"
        out.append(StageModel(stage, d / "model", d / "adapter", parent))
    return out


def run_stack(run_dir: Path) -> list[Any]:
    """The model stages of a finished run, as the eval stage sees them."""
    from domain_lm.pipeline.graph import MODEL_STAGES
    from domain_lm.pipeline.stage import StageInputs
    from domain_lm.pipeline.store import Run
    from domain_lm.stages.eval import stage_models

    run = Run(run_dir)
    results = {s: r for s in MODEL_STAGES if (r := run.load(s)) is not None}
    return stage_models(StageInputs("eval", results=results))


#: The eval stage before this change (main at 15d30c4): what ``before`` runs.
BEFORE_REF = "15d30c4e8e73f96b8c8683c115e47dbf7e59e4d9"

#: Run in a subprocess on the old code: its ``evaluate_model`` per stage (engine start included).
_BEFORE_SNIPPET = """
import json, sys, time
from types import SimpleNamespace
from domain_lm.eval.harness import evaluate_model
from domain_lm.tasks import TemplateRegistry
job = json.load(open(sys.argv[1]))
registry = TemplateRegistry.load(job["templates"])
tasks = {t: (registry.get(t), [SimpleNamespace(**r) for r in recs]) for t, recs in job["tasks"].items()}
t0 = time.perf_counter()
for model in job["models"]:
    evaluate_model(model, tasks, kind="vllm", max_tokens=job["cap"], gpu_memory_utilization=0.1, max_model_len=2048)
print("SECONDS", time.perf_counter() - t0)
"""


def before(stages: list[Any], tasks: dict[str, Any], cap: int, ref: str) -> dict[str, Any]:
    """The eval stage as it was, run from the code at ``ref`` (a ``git archive`` of it, in a
    subprocess): one engine per stage, ``evaluate_model``'s task-by-task loop, its engine options."""
    import subprocess
    import sys
    import tarfile
    import tempfile

    src = Path(tempfile.mkdtemp(prefix="eval-speed-before-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(src, filter="data")
    job = {
        "templates": str(src / "task_templates"),
        "models": [str(s.model) for s in stages],
        "cap": cap,
        "tasks": {t: [{"task": r.task, "lang": r.lang, "inputs": r.inputs, "output": r.output} for r in recs]
                  for t, (_, recs) in tasks.items()},
    }
    (src / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", _BEFORE_SNIPPET, str(src / "job.json")], env=env, cwd=src, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the eval at {ref} failed:\n{out.stderr[-3000:]}")
    seconds = float(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("SECONDS")))
    return {"engines": len(stages), "seconds": seconds, "ref": ref}


def after(stages: list[Any], tasks: dict[str, Any], cap: int, work: Path, strategy: str, **opts: Any) -> dict[str, Any]:
    """The eval stage now (``eval.engines.score_stages`` with the stage's engine options)."""
    from domain_lm.eval.engines import score_stages
    from domain_lm.eval.harness import engine_options

    t0 = time.perf_counter()
    _, runs = score_stages(stages, tasks, strategy, "vllm", cap, work / "combined", **{**engine_options("vllm"), **opts})
    return {
        "engines": len({r.model for r in runs}) if strategy != "swap" else 1,
        "seconds": time.perf_counter() - t0,
        "engine_start_s": sum(r.start_s for r in runs),
        "answer_s": sum(r.answer_s for r in runs),
    }


def main() -> int:
    args = parse_args()
    from domain_lm.config import build_config
    from domain_lm.data.records import load_split
    from domain_lm.models.registry import resolve
    from domain_lm.stages.eval import sample_held

    config = build_config({})
    stages = run_stack(args.run) if args.run else synthetic_stack(resolve(args.model), args.work)
    split = load_split(config)
    tasks = {t: (split.templates[t], sample_held(r, args.examples, config.tasks.seed)) for t, r in split.held_by_task().items() if r}
    cap = config.eval.max_new_tokens
    answers = len(stages) * sum(len(r) for _, r in tasks.values())
    print(f"stages: {', '.join(s.stage for s in stages)}; tasks: {', '.join(f'{t} ({len(r)})' for t, (_, r) in tasks.items())}; "
          f"{answers} answers per variant; cap {cap} tokens", flush=True)

    runs = {
        "before": lambda: before(stages, tasks, cap, args.before_ref),
        "after": lambda: after(stages, tasks, cap, args.work, config.eval.strategy),
        "swap": lambda: after(stages, tasks, cap, args.work, "swap"),
        "adapters": lambda: after(stages, tasks, cap, args.work, "adapters"),
        "per_stage": lambda: after(stages, tasks, cap, args.work, "per_stage"),
        "no-prefix": lambda: after(stages, tasks, cap, args.work, config.eval.strategy, enable_prefix_caching=False),
    }
    results: dict[str, Any] = {}
    for name in args.variants.split(","):
        r = runs[name]()
        r["answers"] = answers
        r["answers_per_s"] = answers / r["seconds"]
        results[name] = r
        print(f"{name:>9}: {r['engines']} engine(s), {r['seconds']:.0f}s, {r['answers_per_s']:.2f} answers/s"
              + (f" (engine start {r['engine_start_s']:.0f}s, answering {r['answer_s']:.0f}s)" if "answer_s" in r else ""), flush=True)
    if "before" in results:
        for name, r in results.items():
            if name != "before":
                r["speedup"] = r["answers_per_s"] / results["before"]["answers_per_s"]
                print(f"{name} / before: {r['speedup']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"stages": [s.stage for s in stages], "answers": answers, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
