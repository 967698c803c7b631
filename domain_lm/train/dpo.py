"""Stage ``dpo``: Direct Preference Optimisation from the SFT model (TRL DPOTrainer).

The cheaper alternative to PPO: no reward model or rollouts, the same preference pairs as the
reward stage (``preference.build_preference_data``). LoRA on the SFT model; the reference is the
same model with the adapter disabled (no second copy in memory). Output: merged ``model`` (+ ``adapter``).
"""

from __future__ import annotations

import logging
import shutil

from domain_lm.data import preference
from domain_lm.runstore import StageResult

log = logging.getLogger(__name__)

SECTIONS = ["dpo", "reward", "tasks", "base_model"]
NEEDS = ["sft|pretrain|base"]


def data_hashes(config) -> dict[str, str]:
    from domain_lm.train import reward

    return reward.data_hashes(config)


def run(ctx) -> StageResult:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from domain_lm.models.loading import load_causal_lm, load_tokenizer, lora_config
    from domain_lm.train.common import last_checkpoint, make_progress_callback, plot_curves, quiet_trainer, training_arguments

    cfg = ctx.config.dpo
    upstream, model_path = ctx.input_model("sft", "pretrain", "base")
    train_pairs, eval_pairs, counts = preference.build_preference_data(ctx.config)
    out = ctx.out
    preference.save_pairs(train_pairs, out / "preferences" / "train.jsonl")
    preference.save_pairs(eval_pairs, out / "preferences" / "eval.jsonl")

    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path, trainable=True)
    args = training_arguments(
        cfg.train,
        ctx.work_dir,
        cls=DPOConfig,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        max_length=cfg.train.max_seq_len,
        disable_dropout=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([p.to_trl() for p in train_pairs]),
        eval_dataset=Dataset.from_list([p.to_trl() for p in eval_pairs]) if eval_pairs else None,
        processing_class=tok,
        peft_config=lora_config(cfg.lora, model=model, top_layers=cfg.lora_top_layers) if cfg.method == "lora" else None,
        callbacks=[make_progress_callback("dpo", out / "train_log.jsonl")],
    )
    quiet_trainer(trainer).train(resume_from_checkpoint=last_checkpoint(ctx.work_dir) if ctx.resume else None)
    metrics = trainer.evaluate() if eval_pairs else {}

    # Save: the adapter (for per-request LoRA serving) and merged full weights (the `model` artefact).
    res = ctx.writer.result
    trained = trainer.model
    if cfg.method == "lora":
        trained.save_pretrained(out / "adapter")
        tok.save_pretrained(out / "adapter")
        trained = trained.merge_and_unload()
        ctx.writer.add_artefact("adapter", "adapter")
    trained.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    ctx.writer.add_artefact("model", "model")
    ctx.writer.add_artefact("preferences", "preferences")
    if plot_curves(trainer.state.log_history, ["loss", "rewards/accuracies", "rewards/margins"], out / "curves.png", title="DPO"):
        ctx.writer.add_artefact("curves", "curves.png")
    shutil.rmtree(out / "adapter" / "runs", ignore_errors=True)

    hist = trainer.state.log_history
    res.metrics["train_loss"] = next((h["train_loss"] for h in reversed(hist) if "train_loss" in h), float("nan"))
    res.metrics["train_pairs"], res.metrics["eval_pairs"] = len(train_pairs), len(eval_pairs)
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_rewards/rejected"):
        if key in metrics:
            res.metrics[key.replace("eval_", "heldout_", 1)] = float(metrics[key])
    res.metrics.update({f"pairs/{k}": v for k, v in counts.items()})
    res.inputs.update(data_hashes(ctx.config))
    ctx.writer.model_card = {
        "title": "DPO model",
        "base_model": str(model_path),
        "method": f"DPO ({cfg.loss_type}, beta={cfg.beta}), {cfg.method}",
        "description": f"Preference-optimised from the {upstream.stage} model on the reward stage's preference data.",
        "data_notes": [f"{v} pairs of kind {k}" for k, v in sorted(counts.items())],
    }
    return res
