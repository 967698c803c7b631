"""Padding-free batches without cross-example attention.

The examples of a batch are concatenated into one row (TRL's ``DataCollatorForLanguageModeling``
with ``padding_free=True``): each keeps its own positions (``position_ids`` restart at 0) and the
collator passes the segment boundaries as ``cu_seq_lens_q`` (the flash-attention convention). No
padding token is ever computed, and the batch composition is unchanged, so a step sees the same
examples as a padded one and learns the same thing.

FlashAttention 2/3 read ``cu_seq_lens_q`` themselves. The ``sdpa`` path of transformers would
build a block-diagonal (N, N) mask over the whole row instead, which is correct but costs the
attention of one N-token sequence (N = the sum of the lengths: 3-4x the padded batch's attention on
our SFT data). :func:`segment_sdpa_attention` runs causal SDPA on each segment separately, so the
attention costs exactly what the unpacked examples cost. It is registered with transformers'
public ``AttentionInterface`` under :data:`SEGMENT_ATTENTION`.
"""

from __future__ import annotations

from typing import Any

import torch

#: The attention implementation name models are switched to for padding-free training.
SEGMENT_ATTENTION = "sdpa_segments"
#: Implementations that cannot read the segment boundaries themselves (they get :data:`SEGMENT_ATTENTION`).
_MASK_BASED = ("sdpa", "eager")


def segment_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed segment; plain ``sdpa`` for anything that is not one packed row.

    query (1, H, N, D), key/value (1, H_kv, N, D), ``cu_seq_lens_q`` (S+1,) segment starts and the
    row length -> (1, N, H, D), the layout transformers' attention functions return. The mask the
    model built for the row is not needed: the segments carry the same information.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    lengths = cu_seq_lens_q.diff().tolist()
    # split, not slicing: its backward is one concatenation, where each slice's backward would
    # write its gradient into a zero tensor of the whole row.
    parts = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=True)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
        if q.shape[2] > 0
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_segment_attention() -> str:
    """Register :func:`segment_sdpa_attention` (and the sdpa mask builder) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa_attention)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)
    return SEGMENT_ATTENTION


def use_segment_attention(model: Any) -> str:
    """Make ``model`` honour packed segments; returns the attention implementation it ends up with.

    Models on ``sdpa``/``eager`` switch to :data:`SEGMENT_ATTENTION`; FlashAttention already reads
    the boundaries and is kept. Call it before wrapping the model with PEFT.
    """
    impl = model.config._attn_implementation
    if impl in _MASK_BASED:
        model.set_attn_implementation(register_segment_attention())
    return model.config._attn_implementation


def padding_free_collator(pad_token_id: int):
    """The collator that flattens a batch into one row with per-example positions and boundaries."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)


#: The dataset column holding an example's loss weight (``sft.loss_weighting: task``).
WEIGHT_COLUMN = "loss_weight"


class WeightedCollator:
    """Wraps a collator: each feature's ``loss_weight`` becomes ``token_weights`` (same shape as
    ``labels``: the example's weight at each of its positions, in a padded batch or a packed row)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        weights = [float(f.get(WEIGHT_COLUMN, 1.0)) for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != WEIGHT_COLUMN} for f in features])
        labels = batch["labels"]
        w = torch.tensor(weights, dtype=torch.float32)
        if labels.shape[0] == len(features):  # padded: one row per example
            batch["token_weights"] = w.unsqueeze(1).expand_as(labels).contiguous()
        else:  # one packed row: the examples in order, each its own length
            lengths = torch.tensor([len(f["input_ids"]) for f in features])
            row = torch.repeat_interleave(w, lengths)
            if row.numel() != labels.shape[1]:
                raise ValueError(f"a packed row of {labels.shape[1]} tokens from examples of {int(lengths.sum())}")
            batch["token_weights"] = row.unsqueeze(0)
        return batch
