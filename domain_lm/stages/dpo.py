"""Stage ``dpo``: DPO (``train.dpo``) on the reward stage's preference pairs, then the adapter, the
merged model, curves and model card."""

from __future__ import annotations

from domain_lm.pipeline.stage import Stage, StageContext
from domain_lm.pipeline.store import ModelCard
from domain_lm.stages.reward import data_hashes

#: Held-out DPO metrics kept, renamed eval_* -> heldout_*.
_HELDOUT = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_rewards/rejected")


def run(ctx: StageContext) -> None:
    from domain_lm.data import preference
    from domain_lm.models.loading import save_model
    from domain_lm.train.common import plot_curves
    from domain_lm.train.dpo import train_dpo

    cfg = ctx.config.dpo
    upstream, model_path = ctx.inputs.model()
    train_pairs, eval_pairs, counts = preference.build_preference_data(ctx.config)
    out = ctx.out
    preference.save_pairs(train_pairs, out / "preferences" / "train.jsonl")
    preference.save_pairs(eval_pairs, out / "preferences" / "eval.jsonl")

    t = train_dpo(model_path, train_pairs, eval_pairs, cfg, ctx.work_dir, out / "train_log.jsonl", ctx.resume, ctx.callbacks)
    # The adapter (for per-request LoRA serving) and merged full weights (the `model` artefact).
    lora = cfg.peft.method == "lora"
    save_model(t.model, out / "model", t.tokenizer, adapter_dir=out / "adapter" if lora else None)
    if lora:
        ctx.add_artefact("adapter", "adapter")
    ctx.add_artefact("model", "model")
    ctx.add_artefact("preferences", "preferences")
    if plot_curves(t.history, ["loss", "rewards/accuracies", "rewards/margins"], out / "curves.png", title="DPO"):
        ctx.add_artefact("curves", "curves.png")

    res = ctx.result
    res.metrics["train_loss"] = next((h["train_loss"] for h in reversed(t.history) if "train_loss" in h), float("nan"))
    res.metrics["train_pairs"], res.metrics["eval_pairs"] = len(train_pairs), len(eval_pairs)
    for key in _HELDOUT:
        if key in t.eval_metrics:
            res.metrics[key.replace("eval_", "heldout_", 1)] = float(t.eval_metrics[key])
    res.metrics.update({f"pairs/{k}": v for k, v in counts.items()})
    res.inputs.update(data_hashes(ctx.config))
    ctx.set_model_card(
        ModelCard(
            title="DPO model",
            base_model=str(model_path),
            method=f"DPO ({cfg.loss_type}, beta={cfg.beta}), {cfg.peft.method}",
            description=f"Preference-optimised from the {upstream.stage} model on the reward stage's preference data.",
            data_notes=[f"{v} pairs of kind {k}" for k, v in sorted(counts.items())],
        )
    )


STAGE = Stage(
    name="dpo",
    title="RLHF: DPO",
    sections=("dpo", "reward", "tasks", "base_model"),
    outputs=("model", "preferences"),
    run=run,
    data_hashes=data_hashes,
)
