"""TRL's SFTTrainer with the completion-only LM head and throughput in the log.

TRL keeps doing what it does well (chat-template rendering, prompt/completion masks, truncation,
packing, the training loop); only the loss changes: :func:`answer_loss` projects the answer
positions alone through the LM head, where TRL's fused head scores every position on the CPU (it
compacts to the labelled ones only on Triton devices) and also computes entropy over all of them.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from domain_lm.train.answer_loss import answer_loss
from domain_lm.train.packing import WEIGHT_COLUMN
from domain_lm.train.runtime import thread_tuning


class ThroughputMeter(TrainerCallback):
    """Answer-token statistics and throughput: since the last log, and over the whole training loop."""

    def __init__(self) -> None:
        self.samples_total = self.tokens_total = 0
        self.threads = torch.get_num_threads()
        self.loop_s = 0.0
        self._loop_t0: float | None = None
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.samples = self.tokens = self.scored = self.correct = 0
        self.entropy = 0.0

    # The loop's own clock: model wrapping and checkpoint loading before it are not training time.
    def on_train_begin(self, args, state, control, **kwargs):
        self.reset()
        self._loop_t0 = self.t0

    def on_train_end(self, args, state, control, **kwargs):
        if self._loop_t0 is not None:
            self.loop_s += time.perf_counter() - self._loop_t0
            self._loop_t0 = None

    def add(self, samples: int, tokens: int, scored: int, correct: int, entropy: float) -> None:
        self.threads = torch.get_num_threads()  # what the step computes with (the tuner may change it after)
        self.samples += samples
        self.tokens += tokens
        self.scored += scored
        self.correct += correct
        self.entropy += entropy
        self.samples_total += samples
        self.tokens_total += tokens

    def flush(self, world_size: int) -> dict[str, float]:
        """The log fields since the last flush (the counts are this process's, scaled to all ranks)."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {"num_tokens": float(self.tokens_total * world_size), "threads": float(self.threads)}
        if self.scored:
            out["entropy"] = self.entropy / self.scored
            out["mean_token_accuracy"] = self.correct / self.scored
        if self.samples:
            out["samples_per_s"] = round(self.samples * world_size / dt, 3)
            out["tokens_per_s"] = round(self.tokens * world_size / dt, 1)
        self.reset()
        return out


def batch_size_of(inputs: dict[str, Any]) -> tuple[int, int]:
    """(examples, real tokens) of a collated batch: padded (``attention_mask``) or one packed row
    (with shared prefixes: the examples and tokens it stands for, not the fewer it computes)."""
    if "example_count" in inputs:
        return int(inputs["example_count"]), int(inputs["example_tokens"])
    if "cu_seq_lens_q" in inputs:
        bounds = inputs["cu_seq_lens_q"]
        return int(bounds.numel() - 1), int(bounds[-1])
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        return int(mask.shape[0]), int(mask.sum())
    ids = inputs["input_ids"]
    return int(ids.shape[0]), int(ids.numel())


class AnswerSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss applies the LM head at the answer positions only (:func:`answer_loss`),
    every token counting the same or (``loss_weighting``) every example's answer.

    Logs, with every loss: answer-token ``entropy`` and ``mean_token_accuracy`` (TRL's names, now over
    the answer tokens only), cumulative ``num_tokens``, and ``samples_per_s`` / ``tokens_per_s`` since
    the previous log, and the ``threads`` the step used. ``meter`` holds the totals of this process and
    the training loop's wall time. On a CPU, a :class:`ThreadTuner` picks the thread count per step.
    """

    def __init__(self, *args: Any, loss_weighting: str = "token", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_weighting = loss_weighting
        self.meter = ThroughputMeter()
        self.add_callback(self.meter)
        tuning = thread_tuning(lambda: self.meter.tokens_total, self.args.world_size)
        if tuning is not None:
            self.add_callback(tuning)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.loss_weighting == "task" and self._signature_columns is not None and WEIGHT_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # evaluation that wants the logits: TRL's full path
            inputs = {k: v for k, v in inputs.items() if k not in ("example_count", "example_tokens")}
            return super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        out = answer_loss(model, inputs, num_items_in_batch, per_example=self.loss_weighting == "example")
        loss = out.loss
        # As TRL (and Trainer.compute_loss): num_items_in_batch counts every rank's tokens and DDP averages gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if model.training:
            samples, tokens = batch_size_of(inputs)
            self.meter.add(samples, tokens, out.tokens, out.correct, out.entropy_sum)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.model.training:
            logs.update(self.meter.flush(self.args.world_size))
        super().log(logs, start_time)
