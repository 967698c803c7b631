"""What one SFT training run returns (``train.sft.train_sft``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SftTrainResult:
    """Losses from the Trainer's log (None when it logged none), the step and example counts,
    the checkpoint a resumed run started from, the log rows, and throughput when measured."""

    train_loss: float
    first_loss: float | None
    final_loss: float | None
    min_loss: float | None
    steps: int
    examples: int
    resumed_from: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
