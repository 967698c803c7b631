"""Completion-only loss that projects only the scored positions through the LM head.

With the loss on the answer tokens only, the (B, T, V) logits of every prompt position are wasted
work: for a one-word classification answer after a ~90-token prompt, the 49k-vocab head and its
cross-entropy (forward, backward and the (B, T, V) memory traffic) were a fifth of an SFT step on
the CPU. The model's own forward takes ``logits_to_keep`` (a tensor of positions) and applies the
head only there, so model-specific output processing (soft-capping, scaling) is kept.

The result is the plain causal-LM loss, exactly: a position t is kept when the label at t+1 is
scored in any row (the union over rows, so one index tensor serves a padded batch and a packed
row alike), and the other rows' labels there are -100 and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class AnswerLoss:
    """``loss`` (scalar, differentiable) and detached statistics of the scored tokens."""

    loss: torch.Tensor
    tokens: int
    entropy_sum: float
    correct: int


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (K,) ascending positions t < T-1 whose next label is scored in some row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def answer_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None) -> AnswerLoss:
    """Mean next-token NLL over the scored labels of ``inputs``, the LM head applied only where needed.

    ``inputs`` is a collated batch with ``labels`` (B, T) (-100: not scored) and whatever the model's
    forward takes (``attention_mask``, or ``position_ids`` and ``cu_seq_lens_q`` for a packed row).
    The sum is divided by ``num_items_in_batch`` when given (the Trainer's count over gradient
    accumulation), else by the number of scored tokens: the same reduction as TRL's SFT loss.
    """
    labels = inputs["labels"]
    keep = scored_positions(labels)  # (K,)
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**forward, use_cache=False, logits_to_keep=keep).logits  # (B, K, V)
    target = labels[:, 1:].index_select(1, keep)  # (B, K)
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    nll = torch.nn.functional.cross_entropy(flat_logits, target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    mask = target != IGNORE_INDEX
    tokens = int(mask.sum())
    denom = num_items_in_batch if num_items_in_batch is not None else max(tokens, 1)
    with torch.no_grad():
        logp = torch.log_softmax(flat_logits.detach(), dim=-1)  # (B*K, V): K is the answer length, small
        entropy = -(logp.exp() * logp).sum(-1).view_as(target)
        correct = (logits.detach().argmax(-1) == target) & mask
    return AnswerLoss(loss=nll / denom, tokens=tokens, entropy_sum=float(entropy[mask].sum()), correct=int(correct.sum()))
