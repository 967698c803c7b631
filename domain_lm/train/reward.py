"""A Bradley-Terry reward model on preference pairs (TRL RewardTrainer): the ``reward`` stage's trainer.

seq-classification model (num_labels=1) from the SFT model -> LoRA or full training -> held-out
pair accuracy -> reward mean/std on the eval set saved with the model (``reward_stats.json``,
used by PPO to normalise). The stage (``domain_lm.stages.reward``) builds the pairs and plots.
The saved model loads with ``load_reward_model`` (AutoModelForSequenceClassification); it is not
a causal LM, so its artefact is ``reward_model``, deliberately not ``model``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from domain_lm.config import RewardSection
from domain_lm.core.figures import pyplot, save_figure
from domain_lm.data.preference import PreferencePair

log = logging.getLogger(__name__)

STATS_FILE = "reward_stats.json"


# --------------------------------------------------------------------------- model + scoring


def load_reward_model(path: str | Path, trainable: bool = False):
    """(model, tokenizer, stats) of a saved reward model; stats may be {} (older models)."""
    from domain_lm.models.loading import load_seq_classifier, load_tokenizer

    tok = load_tokenizer(path)
    model = load_seq_classifier(path, num_labels=1, trainable=trainable)
    model.config.pad_token_id = tok.pad_token_id
    stats_path = Path(path) / STATS_FILE
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    return model, tok, stats


def encode_dialogues(tok, prompts: Sequence[list[dict[str, str]]], answers: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Chat-template each prompt + assistant answer exactly as TRL does for conversational data,
    keep the last ``max_len`` tokens (the answer is at the end), right-pad."""
    ids = []
    for msgs, ans in zip(prompts, answers):
        enc = tok.apply_chat_template(list(msgs) + [{"role": "assistant", "content": ans}], tokenize=True, return_dict=True)
        ids.append(list(enc["input_ids"])[-max_len:])
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": attn}


@torch.no_grad()
def score(
    model, tok, prompts: Sequence[list[dict[str, str]]], answers: Sequence[str], batch_size: int = 8, max_len: int = 512
) -> torch.Tensor:
    """(N,) raw reward of each (prompt, answer)."""
    out = []
    dev = next(model.parameters()).device
    for i in range(0, len(answers), batch_size):
        batch = encode_dialogues(tok, prompts[i : i + batch_size], answers[i : i + batch_size], max_len)
        out.append(model(**{k: v.to(dev) for k, v in batch.items()}).logits[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def pair_metrics(
    model, tok, pairs: Sequence[PreferencePair], batch_size: int = 8, max_len: int = 512
) -> tuple[dict[str, float], torch.Tensor]:
    """Held-out accuracy and reward statistics; returns (metrics, margins (N,))."""
    prompts = [p.prompt for p in pairs]
    chosen = score(model, tok, prompts, [p.chosen for p in pairs], batch_size, max_len)
    rejected = score(model, tok, prompts, [p.rejected for p in pairs], batch_size, max_len)
    margins = chosen - rejected
    both = torch.cat([chosen, rejected])
    metrics = {
        "eval_pairs": len(pairs),
        "accuracy": (margins > 0).float().mean().item() if len(pairs) else 0.0,
        "margin_mean": margins.mean().item() if len(pairs) else 0.0,
        "reward_mean": both.mean().item() if len(pairs) else 0.0,
        "reward_std": both.std().item() if len(both) > 1 else 1.0,
    }
    return metrics, margins


def margin_histogram(margins: torch.Tensor, path: Path, title: str = "reward margin (chosen - rejected), held-out pairs") -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(margins.numpy(), bins=30, color="#3b7dd8")
    ax.axvline(0.0, color="k", lw=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("margin")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- training


@dataclass
class RewardTrainResult:
    """Held-out pair metrics of a trained reward model, its margins (N,) and the Trainer's log."""

    metrics: dict[str, Any]
    margins: torch.Tensor
    history: list[dict[str, Any]]


def train_reward_model(
    model_path: str | Path,
    train_pairs: Sequence[PreferencePair],
    eval_pairs: Sequence[PreferencePair],
    section: RewardSection,
    work_dir: Path,
    out_dir: Path,
    resume: bool = False,
    log_path: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> RewardTrainResult:
    """Train, evaluate and save a reward model (merged full weights) to ``out_dir``."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from domain_lm.models.loading import lora_config, save_model
    from domain_lm.train.common import last_checkpoint, make_progress_callback, quiet_trainer, training_arguments

    model, tok, _ = load_reward_model(model_path, trainable=True)
    args = training_arguments(
        section.train,
        work_dir,
        cls=RewardConfig,
        max_length=section.train.max_seq_len,
        center_rewards_coefficient=section.center_rewards_coefficient,
        disable_dropout=True,
    )
    peft = section.peft
    peft_conf = lora_config(peft.lora, task_type="SEQ_CLS", model=model, top_layers=peft.top_layers) if peft.method == "lora" else None
    progress = [make_progress_callback("reward model", log_path)] if log_path else []
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([p.to_trl() for p in train_pairs]),
        processing_class=tok,
        peft_config=peft_conf,
        callbacks=[*progress, *callbacks],
    )
    quiet_trainer(trainer).train(resume_from_checkpoint=last_checkpoint(work_dir) if resume else None)

    trained = trainer.model
    if peft_conf is not None:
        trained = trained.merge_and_unload()
    trained.eval()
    # Held-out pairs; with no eval split, the training pairs (then the accuracy is a fit, not a test).
    held = list(eval_pairs) or list(train_pairs)
    if section.max_eval_pairs is not None and len(held) > section.max_eval_pairs:
        held = random.Random(section.train.seed).sample(held, section.max_eval_pairs)
    metrics, margins = pair_metrics(trained, tok, held, section.train.batch_size, section.train.max_seq_len)
    metrics["eval_is_heldout"] = bool(eval_pairs)
    metrics["train_pairs"] = len(train_pairs)
    history = trainer.state.log_history
    metrics["train_loss"] = next((h["train_loss"] for h in reversed(history) if "train_loss" in h), float("nan"))

    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(trained, out_dir, tok)
    stats = {"mean": metrics["reward_mean"], "std": metrics["reward_std"], "n": 2 * len(held), "accuracy": metrics["accuracy"]}
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return RewardTrainResult(metrics=metrics, margins=margins, history=history)
