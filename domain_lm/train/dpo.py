"""Direct Preference Optimisation (TRL DPOTrainer): the ``dpo`` stage's trainer.

The cheaper alternative to PPO: no reward model or rollouts, the same preference pairs as the
reward stage. LoRA on the upstream (SFT) model; the reference is the same model with the adapter
disabled (no second copy in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from domain_lm.config import DpoSection
from domain_lm.data.preference import PreferencePair


@dataclass
class DpoTrainResult:
    """The trained model (a PEFT model for LoRA), its tokenizer, the Trainer's log and the
    held-out metrics (``eval_*``, empty without held-out pairs)."""

    model: Any
    tokenizer: Any
    history: list[dict[str, Any]]
    eval_metrics: dict[str, float]


def train_dpo(
    model_path: str | Path,
    train_pairs: Sequence[PreferencePair],
    eval_pairs: Sequence[PreferencePair],
    section: DpoSection,
    work_dir: Path,
    log_path: Path,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
) -> DpoTrainResult:
    """Train DPO on ``train_pairs`` (checkpoints in ``work_dir``), evaluate on ``eval_pairs``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from domain_lm.models.loading import load_causal_lm, load_tokenizer, lora_config
    from domain_lm.train.common import last_checkpoint, make_progress_callback, quiet_trainer, training_arguments

    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path, trainable=True)
    args = training_arguments(
        section.train,
        work_dir,
        cls=DPOConfig,
        beta=section.beta,
        loss_type=[section.loss_type],
        max_length=section.train.max_seq_len,
        disable_dropout=True,
    )
    peft = section.peft
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([p.to_trl() for p in train_pairs]),
        eval_dataset=Dataset.from_list([p.to_trl() for p in eval_pairs]) if eval_pairs else None,
        processing_class=tok,
        peft_config=lora_config(peft.lora, model=model, top_layers=peft.top_layers) if peft.method == "lora" else None,
        callbacks=[make_progress_callback("dpo", log_path), *callbacks],
    )
    quiet_trainer(trainer).train(resume_from_checkpoint=last_checkpoint(work_dir) if resume else None)
    metrics = trainer.evaluate() if eval_pairs else {}
    return DpoTrainResult(model=trainer.model, tokenizer=tok, history=trainer.state.log_history, eval_metrics=metrics)
