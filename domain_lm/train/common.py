"""Shared pieces of every training stage: TrainingArguments from a config section, resume,
a callback that feeds the rich progress display and a JSONL metrics log, and curve plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from domain_lm.config import TrainSection
from domain_lm.core.figures import pyplot, save_figure


def on_gpu() -> bool:
    return torch.cuda.is_available()


def training_arguments(section: TrainSection, output_dir: str | Path, cls: Any = None, **overrides: Any):
    """TrainingArguments (or a TRL config class ``cls``) built from a ``TrainSection``.

    float32 on CPU (bf16 is emulated there and ~30x slower), bf16 on a GPU that supports it.
    ``data_seed`` is fixed so a resumed run sees the same data order as an uninterrupted one.
    No gradient checkpointing unless the section asks for it: TRL's configs turn it on by default,
    and on the CPU recomputing every layer's forward costs ~30% of an SFT step to save memory that
    a 135M-parameter model does not need.
    """
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    bf16 = on_gpu() and torch.cuda.is_bf16_supported()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=section.learning_rate,
        max_steps=section.max_steps,
        num_train_epochs=section.num_epochs,
        per_device_train_batch_size=section.batch_size,
        per_device_eval_batch_size=section.batch_size,
        gradient_accumulation_steps=section.grad_accum,
        warmup_ratio=section.warmup_ratio,
        weight_decay=section.weight_decay,
        lr_scheduler_type=section.lr_scheduler,
        max_grad_norm=section.max_grad_norm,
        logging_steps=section.logging_steps,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=2,
        seed=section.seed,
        data_seed=section.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not on_gpu(),
        report_to=["tensorboard"],
        logging_dir=str(Path(output_dir) / "tb"),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        deepspeed=section.deepspeed,
        gradient_checkpointing=section.gradient_checkpointing,
    )
    kwargs.update(overrides)
    # transformers 5 dropped ``warmup_ratio`` (a float ``warmup_steps`` below 1 is the ratio) and
    # ``logging_dir`` (TensorBoard logs go to <output_dir>/runs); keep older/other classes working.
    import inspect

    accepted = inspect.signature(cls).parameters
    if "warmup_ratio" not in accepted:
        ratio = kwargs.pop("warmup_ratio")
        kwargs.setdefault("warmup_steps", ratio)
    if "logging_dir" not in accepted:
        kwargs.pop("logging_dir")
    return cls(**kwargs)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` directory under ``output_dir`` that holds trainer state."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    cks = [p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not cks:
        return None
    return str(max(cks, key=lambda p: int(p.name.split("-")[-1])))


def quiet_trainer(trainer):
    """Drop the Trainer's stdout printer of every log dict: the rich bar shows progress and loss,
    the JSONL log and TensorBoard keep every value. Returns the trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def make_progress_callback(description: str, log_path: str | Path):
    """A TrainerCallback that advances a rich progress bar and appends every log to a JSONL file."""
    from transformers import TrainerCallback

    from domain_lm.core.progress import display

    class _Progress(TrainerCallback):
        def __init__(self) -> None:
            self._ctx = None
            self._tid = None
            self._log = Path(log_path)

        def on_train_begin(self, args, state, control, **kw):
            self._ctx = display()
            progress = self._ctx.__enter__()
            self._progress = progress
            self._tid = progress.add_task(description, total=state.max_steps or None, completed=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if self._tid is not None:
                self._progress.update(self._tid, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and (args.process_index == 0):
                if self._tid is not None and "loss" in logs:
                    self._progress.update(self._tid, description=f"{description}  loss {float(logs['loss']):.4g}")
                self._log.parent.mkdir(parents=True, exist_ok=True)
                with self._log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        def on_train_end(self, args, state, control, **kw):
            if self._ctx is not None:
                self._progress.stop_task(self._tid)
                self._ctx.__exit__(None, None, None)
                self._ctx = None

    return _Progress()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(history: Iterable[dict[str, Any]], keys: list[str], path: str | Path, title: str = "") -> Path | None:
    """Plot ``keys`` against ``step`` from a log history into one PNG (one panel per key)."""
    plt = pyplot()

    rows = list(history)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3), squeeze=False)
    for ax, key in zip(axes[0], present):
        pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
