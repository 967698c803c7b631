"""Stage ``pretrain``: continued pretraining on the corpus stage's blocks (``train.pretrain``), then
the merged model, perplexity after, curves, report and model card.

Distributed runs: rank 0 runs this stage through the run store; the other ranks call
``run_worker``, which only joins the training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain_lm.config import PipelineConfig
from domain_lm.core import atomic
from domain_lm.pipeline.stage import Stage, StageContext
from domain_lm.pipeline.store import ModelCard, Run

if TYPE_CHECKING:
    from domain_lm.train.pretrain import PretrainData


def text_notes(data: PretrainData) -> list[str]:
    """Which text each perplexity and the replay come from."""
    return [
        f"domain perplexity (ppl_domain_*): {len(data.domain_heldout)} blocks of {data.domain_heldout_source}",
        f"general perplexity (ppl_general_*): {len(data.general_heldout)} blocks of {data.general_heldout_source}",
        f"replay: {data.n_replay} blocks of {data.general_source}",
    ]


def _write_report(out: Path, metrics: dict[str, Any], method: str, data: PretrainData) -> None:
    lines = ["# Continued pretraining", "", f"Method: {method}.", ""]
    lines += [f"- {note}" for note in text_notes(data)]
    lines += ["", "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", "![training curves](curves.png)", ""]
    atomic.write_text(out / "report.md", "\n".join(lines))


def run(ctx: StageContext) -> None:
    import torch

    from domain_lm.models.loading import load_causal_lm, save_model
    from domain_lm.train.common import plot_curves
    from domain_lm.train.pretrain import heldout_perplexity, history_metrics, train

    section = ctx.config.pretrain
    res = ctx.result
    _, base_path = ctx.inputs.model()
    corpus = ctx.inputs.require("corpus", "Run `domain-lm corpus build` first (or `domain-lm pipeline run`).")
    if not section.enabled:
        # Disabled: hand the base model through unchanged so later stages still find a `model`.
        res.artefacts["model"] = str(base_path)
        res.metrics["skipped"] = True
        return
    block_size = ctx.config.corpus.block_size
    lora = section.peft.method == "lora"

    t = train(section, base_path, corpus.path, ctx.work_dir, block_size, ctx.resume, ctx.callbacks)
    out = ctx.out
    save_model(t.final_dir, out / "model", t.tokenizer, adapter_dir=out / "adapter" if lora else None)
    if lora:
        ctx.add_artefact("adapter", "adapter")
    ctx.add_artefact("model", "model")

    # Perplexity after, on the saved merged weights (what later stages will load).
    merged = load_causal_lm(out / "model", dtype=torch.float32)
    after = heldout_perplexity(merged, t.data, t.tokenizer.pad_token_id, "after")
    atomic.write_text(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in t.history))
    ctx.add_artefact("train_log", "train_log.jsonl")
    if t.tensorboard_dir is not None:
        shutil.copytree(t.tensorboard_dir, out / "tensorboard")
        ctx.add_artefact("tensorboard", "tensorboard")
    if plot_curves(t.history, ["loss", "learning_rate", "tokens_per_s"], out / "curves.png", title="pretrain"):
        ctx.add_artefact("curves", "curves.png")

    m = res.metrics
    m.update(t.before)
    m.update(after)
    for kind in ("domain", "general"):
        b, a = m.get(f"ppl_{kind}_before"), m.get(f"ppl_{kind}_after")
        if b and a and b == b and a == a:  # not NaN
            m[f"ppl_{kind}_change_pct"] = round(100.0 * (a - b) / b, 2)
    m.update(history_metrics(t.history))
    m.update(
        {
            "steps": t.steps,
            "blocks_domain": t.data.n_domain,
            "blocks_replay": t.data.n_replay,
            "trainable_params": t.trainable_params,
            "train_seconds": round(t.train_seconds, 1),
            "resumed": t.resumed_from is not None,
        }
    )
    method = section.peft.method + (" + embeddings/LM head" if lora and section.train_embeddings else "")
    _write_report(out, {k: v for k, v in m.items() if isinstance(v, (int, float, bool))}, method, t.data)
    ctx.add_artefact("report", "report.md")
    res.inputs["corpus"] = corpus.fingerprint
    ctx.set_model_card(
        ModelCard(
            title="domain continued pretraining",
            base_model=str(base_path),
            method=method,
            description="Continued causal-LM pretraining on the bank-domain corpus, with replay of general text against forgetting. "
            "Perplexity is measured on held-out domain documents and on general text that is never trained on, before and after.",
            data_notes=[f"domain training blocks: {t.data.n_domain} x {block_size} tokens", *text_notes(t.data)],
        )
    )


def run_worker(config: PipelineConfig, resume: bool = False) -> None:
    """A non-zero rank of a distributed run: join the training, write nothing of the stage."""
    from domain_lm.pipeline.run import stage_inputs
    from domain_lm.train.pretrain import train

    run_ = Run.from_config(config)
    inputs = stage_inputs(STAGE.name, run_)
    hint = "Distributed pretrain needs them complete: run the base and corpus stages first (single process)."
    corpus = inputs.require("corpus", hint)
    _, base_path = inputs.model()
    train(config.pretrain, base_path, corpus.path, run_.work_dir(STAGE.name), config.corpus.block_size, resume)


STAGE = Stage(name="pretrain", title="Continued pretraining", sections=("pretrain", "base_model"), outputs=("model",), run=run)
