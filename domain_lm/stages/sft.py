"""Stage ``sft``: instruction tuning on the templated bank tasks (``train.sft``), then the merged
model, optional per-task adapters, the loss curve and the model card.

The training data is rendered through the same task templates the service uses.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from domain_lm.config import PipelineConfig
from domain_lm.pipeline.stage import Stage, StageContext
from domain_lm.pipeline.store import ModelCard


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.data.sft_data import data_hashes as sft_data_hashes

    return sft_data_hashes(config)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def run(ctx: StageContext) -> None:
    from domain_lm.data.sft_data import build_sft_data
    from domain_lm.models.loading import load_tokenizer, save_model
    from domain_lm.tasks import TemplateRegistry
    from domain_lm.train.common import plot_curves
    from domain_lm.train.sft import read_examples, train_sft

    cfg = ctx.config
    res = ctx.result
    upstream, model_path = ctx.inputs.model()
    lora = cfg.sft.peft.method == "lora"

    # 1. data, rendered with the same templates the service uses
    registry = TemplateRegistry.load(cfg.tasks.templates_dir)
    data_dir = ctx.out / "data"
    stats = build_sft_data(cfg, load_tokenizer(model_path), data_dir, registry=registry)
    examples = read_examples(data_dir / "train.jsonl")
    res.inputs.update(data_hashes(cfg))

    # 2. the multi-task model; checkpoints go to the stage work dir (``--resume`` looks there)
    adapter_dir = ctx.out / ("adapter" if lora else "model")
    m = train_sft(model_path, examples, cfg.sft, ctx.work_dir, adapter_dir, resume=ctx.resume)
    if lora:
        save_model(adapter_dir, ctx.out / "model")
        ctx.add_artefact("adapter", "adapter")
    ctx.add_artefact("model", "model")
    ctx.add_artefact("data", "data")
    ctx.add_artefact("eval_records", "data/eval_records.jsonl")

    # 3. optional per-task adapters (served side by side by the engine's LoRA support)
    if cfg.sft.per_task_adapters and lora:
        by_task: dict[str, list[dict[str, Any]]] = {}
        for ex in examples:
            by_task.setdefault(ex["task"], []).append(ex)
        for task, exs in sorted(by_task.items()):
            sub = ctx.out / "adapters" / _safe(task)
            work = ctx.work_dir / "tasks" / _safe(task)
            tm = train_sft(model_path, exs, cfg.sft, work, sub, resume=ctx.resume, description=f"sft {task}")
            res.metrics[f"final_loss/{task}"] = tm.final_loss
        ctx.add_artefact("adapters", "adapters")

    # 4. metrics, curve, card
    (ctx.out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in m.history))
    if plot_curves(m.history, ["loss", "learning_rate", "grad_norm"], ctx.out / "loss.png", title="SFT"):
        ctx.add_artefact("loss_plot", "loss.png")
    res.metrics.update({k: v for k, v in asdict(m).items() if v is not None and k not in ("history", "resumed_from")})
    res.metrics.update(stats.as_metrics())
    peft = cfg.sft.peft
    ctx.set_model_card(
        ModelCard(
            title="SFT (bank task instruction tuning)",
            base_model=str(model_path),
            method=peft.method + (f" r={peft.lora.r} alpha={peft.lora.alpha}" if lora else "") + ", loss on answer tokens only",
            description=f"Instruction-tuned from the `{upstream.stage}` stage on {stats.as_metrics()['train_examples']} examples "
            f"rendered through the task templates (tasks: {', '.join(sorted(stats.train_examples))}).",
            data_notes=[
                f"{t}: {n} training examples, {stats.eval_records.get(t, 0)} held-out records"
                for t, n in sorted(stats.train_examples.items())
            ]
            + [f"{stats.duplicates} duplicates and {stats.too_long} over-length examples dropped"],
        )
    )


STAGE = Stage(
    name="sft",
    title="Instruction tuning (SFT)",
    sections=("sft", "tasks", "base_model"),
    outputs=("model", "data", "eval_records"),
    run=run,
    data_hashes=data_hashes,
)
