"""Instruction tuning on templated bank tasks (TRL SFTTrainer + LoRA): the ``sft`` stage's trainer.

Reads top to bottom: examples -> tokenizer -> model -> trainer -> train (resumable) -> save the
adapter (the stage, ``domain_lm.stages.sft``, merges it and writes metrics, plot, model card).

Loss is on the answer tokens only. The examples are given to TRL as conversational
prompt/completion pairs: TRL renders the prompt with the tokenizer's chat template and
``add_generation_prompt=True`` (exactly what the inference engines send) and masks it out, so
the loss covers the assistant answer and its end-of-turn token. This works with any chat template,
including those without ``{% generation %}`` markers that ``assistant_only_loss`` would need.

Speed on the CPU (issue 18): no gradient checkpointing (``training_arguments``), the batch flattened
into one padding-free row whose examples attend only to themselves (``train.packing``), the LM head
applied only at the answer positions (``train.answer_loss``), LoRA dropout masks from uniform draws
(``train.dropout``) and the thread count tuned while training (``train.runtime``); see
bench/sft_speed.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain_lm.config import SftSection

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data for TRL


def to_prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    """A chat example ``{"messages": [..., assistant]}`` -> TRL conversational prompt/completion."""
    msgs = example["messages"]
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError("an SFT example must end with an assistant turn")
    return {"prompt": msgs[:-1], "completion": [msgs[-1]]}


def make_dataset(examples: list[dict[str, Any]], weights: list[float] | None = None):
    from datasets import Dataset

    from domain_lm.train.packing import WEIGHT_COLUMN

    rows = [to_prompt_completion(e) for e in examples]
    if weights is not None:
        rows = [{**r, WEIGHT_COLUMN: w} for r, w in zip(rows, weights)]
    return Dataset.from_list(rows)


def example_task_weights(examples: list[dict[str, Any]], tokenizer: Any) -> list[float]:
    """``answer_loss.task_weights`` of SFT examples: their ``task`` and answer length in tokens (+ end of turn)."""
    from domain_lm.train.answer_loss import task_weights

    lengths = [len(tokenizer(e["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) + 1 for e in examples]
    return task_weights([str(e.get("task", "")) for e in examples], lengths)


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- training


def qlora_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def build_trainer(
    model_path: str | Path,
    examples: list[dict[str, Any]],
    section: SftSection,
    output_dir: str | Path,
    callbacks: list | None = None,
    padding_free: bool | None = None,
    group_by_length: bool | None = None,
):
    """An SFTTrainer over ``examples`` for the model at ``model_path`` (LoRA unless method=full).

    ``padding_free`` (default: ``sft.padding_free``, on) flattens each batch into one row without
    cross-example attention; off, batches are padded to their longest example, and
    ``group_by_length`` (default: ``sft.group_by_length``, off) batches examples of similar length
    (less padding, a different order). With ``sft.packing`` TRL packs examples into ``max_seq_len``
    rows instead (more examples per step), also without cross-example attention.
    """
    from trl import SFTConfig

    from domain_lm.models.loading import load_causal_lm, load_tokenizer, lora_config
    from domain_lm.train.common import on_gpu, quiet_trainer, training_arguments
    from domain_lm.train.dropout import use_uniform_lora_dropout
    from domain_lm.train.packing import (
        SEGMENT_ATTENTION,
        SharedPrefixCollator,
        WeightedCollator,
        padding_free_collator,
        use_segment_attention,
    )
    from domain_lm.train.sft_trainer import AnswerSFTTrainer

    # Until the config has these fields (issue 18), read them with their defaults.
    if padding_free is None:
        padding_free = section.padding_free
    if group_by_length is None:
        group_by_length = section.group_by_length

    from domain_lm.errors import DomainLMError

    tokenizer = load_tokenizer(model_path)
    if not getattr(tokenizer, "chat_template", None):
        raise DomainLMError(f"Model {model_path} has no chat template; SFT renders prompts with it (as the service does). "
                            "Use an instruct model or add a chat template to its tokenizer_config.json.")
    if section.qlora and section.peft.method == "lora" and qlora_available():
        model = _load_4bit(model_path)
    else:
        if section.qlora:
            log.warning("sft.qlora requested but bitsandbytes + CUDA are not available: training plain LoRA")
        model = load_causal_lm(model_path, trainable=True)
    peft_config = lora_config(section.peft.lora, model=model, top_layers=section.peft.top_layers) if section.peft.method == "lora" else None
    args = training_arguments(
        section.train,
        output_dir,
        cls=SFTConfig,
        max_length=section.train.max_seq_len,
        packing=section.packing,
        completion_only_loss=True,
        assistant_only_loss=False,
        dataset_num_proc=None,
        eos_token=tokenizer.eos_token,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    # Packed rows (TRL's packing, or our padding-free batches) need attention that stops at example borders.
    padding_free = padding_free and not section.packing
    attention = use_segment_attention(model) if padding_free or section.packing else None
    # Shared prompt prefixes need the per-segment attention (FlashAttention cannot read them).
    shared = padding_free and section.shared_prefix and attention == SEGMENT_ATTENTION
    collator = None
    if padding_free:
        collator = SharedPrefixCollator(tokenizer.pad_token_id) if shared else padding_free_collator(tokenizer.pad_token_id)
    weights = None
    if section.loss_weighting == "task" and section.packing:
        log.warning("sft.loss_weighting: task needs one example per feature; TRL packing merges them: every token weighs the same")
    elif section.loss_weighting == "task" and shared:
        weights = example_task_weights(examples, tokenizer)  # the collator carries them to the tokens itself
    elif section.loss_weighting == "task":
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        weights = example_task_weights(examples, tokenizer)
        collator = WeightedCollator(collator or DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id))
    trainer = AnswerSFTTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=make_dataset(examples, weights),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks or [],
        loss_weighting=section.loss_weighting,
    )
    if not on_gpu():
        use_uniform_lora_dropout(trainer.model)
    return quiet_trainer(trainer)


def _load_4bit(model_path: str | Path):
    """QLoRA: the base in 4-bit NF4 (GPU + bitsandbytes only; Dettmers et al. 2023, arXiv:2305.14314)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=q, device_map="auto")
    return prepare_model_for_kbit_training(model)


@dataclass
class SftTrainResult:
    """What one SFT run returns: losses from the Trainer's log (None when it logged none), the step
    and example counts, the checkpoint a resumed run started from, the log rows, and the throughput
    of this call's training loop (real tokens, no padding; 0 when it ran no step)."""

    train_loss: float
    first_loss: float | None
    final_loss: float | None
    min_loss: float | None
    steps: int
    examples: int
    resumed_from: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0


def train_sft(
    model_path: str | Path,
    examples: list[dict[str, Any]],
    section: SftSection,
    work_dir: str | Path,
    out_adapter: str | Path,
    resume: bool = False,
    description: str = "sft",
) -> SftTrainResult:
    """Train on ``examples``; save the adapter (LoRA) or full model to ``out_adapter``."""
    from domain_lm.train.common import last_checkpoint, make_progress_callback, read_jsonl
    from domain_lm.train.runtime import configure_threads

    configure_threads()
    work = Path(work_dir)
    log_path = work / "log.jsonl"
    ckpt = last_checkpoint(work) if resume else None
    if ckpt is None and log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh curve
    trainer = build_trainer(model_path, examples, section, work, callbacks=[make_progress_callback(description, log_path)])
    out = trainer.train(resume_from_checkpoint=ckpt)
    trainer.save_model(str(out_adapter))
    trainer.processing_class.save_pretrained(str(out_adapter))
    history = [r for r in read_jsonl(log_path) if "loss" in r]
    losses = [r["loss"] for r in history]
    meter, world = trainer.meter, trainer.args.world_size
    loop_s = max(meter.loop_s, 1e-9)
    return SftTrainResult(
        train_loss=float(out.training_loss),
        first_loss=float(losses[0]) if losses else None,
        final_loss=float(losses[-1]) if losses else None,
        min_loss=float(min(losses)) if losses else None,
        steps=int(trainer.state.global_step),
        examples=len(examples),
        resumed_from=ckpt,
        history=history,
        samples_per_s=meter.samples_total * world / loop_s if meter.samples_total else 0.0,
        tokens_per_s=meter.tokens_total * world / loop_s if meter.tokens_total else 0.0,
    )

