"""Completion-only loss that projects only the scored positions through the LM head.

With the loss on the answer tokens only, the (B, T, V) logits of every prompt position are wasted
work: for a one-word classification answer after a ~90-token prompt, the 49k-vocab head and its
cross-entropy (forward, backward and the (B, T, V) memory traffic) were a fifth of an SFT step on
the CPU. The model's own forward takes ``logits_to_keep`` (a tensor of positions) and applies the
head only there, so model-specific output processing (soft-capping, scaling) is kept.

The result is the plain causal-LM loss, exactly: a position t is kept when the label at t+1 is
scored in any row (the union over rows, so one index tensor serves a padded batch and a packed
row alike), and the other rows' labels there are -100 and ignored.

``per_example`` weighs every example's answer the same instead of every token: in a task mix a
one-word label answer (2 scored tokens) beside a JSON answer (60) otherwise gets 3% of the
gradient, and the demo's multi-task SFT learned entities and extraction while its sentiment
answers stayed at chance. The weights keep the tokens' total, so the scale (and the Trainer's
normalisation by ``num_items_in_batch``) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
#: Batch keys for the loss and the meters, not the model.
NOT_MODEL_INPUTS = ("labels", "token_weights", "example_count", "example_tokens")


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


def example_ids(inputs: dict[str, Any]) -> torch.Tensor:
    """(B, T) the example each position belongs to: its row in a padded batch; in a packed row the
    row and the count of position breaks so far (``position_ids`` restart at every example, at 0 or,
    after a shared prefix, where the example leaves it; the prefix, never scored, joins its first
    example)."""
    labels = inputs["labels"]
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1) * labels.shape[1]
    pos = inputs.get("position_ids")
    if pos is None:
        return rows.expand_as(labels)
    breaks = torch.ones_like(pos, dtype=torch.long)
    breaks[:, 1:] = (pos[:, 1:] != pos[:, :-1] + 1).long()
    return rows + breaks.cumsum(dim=1)


def answer_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None, per_example: bool = False
) -> AnswerLoss:
    """Mean next-token NLL over the scored labels of ``inputs``, the LM head applied only where needed.

    ``inputs`` is a collated batch with ``labels`` (B, T) (-100: not scored) and whatever the model's
    forward takes (``attention_mask``, or ``position_ids`` and ``cu_seq_lens_q`` for a packed row).
    The sum is divided by ``num_items_in_batch`` when given (the Trainer's count over gradient
    accumulation), else by the number of scored tokens: the same reduction as TRL's SFT loss. With
    ``per_example`` each token's NLL is weighted by (scored tokens / examples) / (its example's scored
    tokens): every example's answer counts the same and the weights still sum to the scored tokens.
    ``inputs["token_weights"]`` (B, T), when present, multiplies each scored token's NLL (the weight
    of the example the token belongs to; see ``task_weights``).
    """
    labels = inputs["labels"]
    keep = scored_positions(labels)  # (K,)
    forward = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
    logits = model(**forward, use_cache=False, logits_to_keep=keep).logits  # (B, K, V)
    target = labels[:, 1:].index_select(1, keep)  # (B, K)
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    mask = target != IGNORE_INDEX
    tokens = int(mask.sum())
    per_token = torch.nn.functional.cross_entropy(flat_logits, target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    weights = inputs.get("token_weights")
    if weights is not None:  # per-example weights (sft.loss_weighting: task), carried to every token
        per_token = per_token * weights[:, 1:].index_select(1, keep).reshape(-1).to(per_token.dtype)
    if per_example and tokens:
        owner = example_ids(inputs)[:, 1:].index_select(1, keep)[mask]  # (tokens,) the example of each scored token
        _, inverse, counts = torch.unique(owner, return_inverse=True, return_counts=True)
        weight = torch.zeros_like(target, dtype=per_token.dtype)
        weight[mask] = (tokens / counts.numel()) / counts[inverse].to(per_token.dtype)
        nll = (per_token * weight.reshape(-1)).sum()
    else:
        nll = per_token.sum()
    denom = num_items_in_batch if num_items_in_batch is not None else max(tokens, 1)
    with torch.no_grad():
        logp = torch.log_softmax(flat_logits.detach(), dim=-1)  # (B*K, V): K is the answer length, small
        entropy = -(logp.exp() * logp).sum(-1).view_as(target)
        correct = (logits.detach().argmax(-1) == target) & mask
    return AnswerLoss(loss=nll / denom, tokens=tokens, entropy_sum=float(entropy[mask].sum()), correct=int(correct.sum()))


def task_weights(tasks: list[str], answer_tokens: list[int]) -> list[float]:
    """Per-example loss weights that give every task the same share of the gradient per example and
    every token of a task the same weight: (mean answer tokens over all examples) / (the mean of the
    example's task). A task of one-word answers then counts per example as much as one of long JSON
    answers, and an empty answer does not outweigh a long one of the same task (``per_example`` does)."""
    if len(tasks) != len(answer_tokens):
        raise ValueError(f"{len(tasks)} tasks but {len(answer_tokens)} answer lengths")
    if not tasks:
        return []
    sums: dict[str, list[int]] = {}
    for t, n in zip(tasks, answer_tokens):
        sums.setdefault(t, []).append(max(1, n))
    overall = sum(max(1, n) for n in answer_tokens) / len(answer_tokens)
    mean = {t: sum(v) / len(v) for t, v in sums.items()}
    return [overall / mean[t] for t in tasks]
