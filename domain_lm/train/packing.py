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

Shared prompt prefixes (:class:`SharedPrefixCollator`): the examples of one task share a long
start (the chat template's header and the task's system prompt: ~60-90 of a label example's ~80-140
tokens), and every example used to compute it again. The collator puts a prefix that several
examples of the batch share into the row once, followed by each example's remaining tokens at the
positions they have in the whole example; a suffix segment attends to its prefix and causally to
itself (``shared_prefix`` names each segment's prefix segment). The prefix's hidden states are
those of each example's own (same tokens, same positions, causal), and autograd sums the suffixes'
gradients into it: the loss and the gradients are the unshared batch's, for fewer tokens.
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
    shared_prefix: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed segment; plain ``sdpa`` for anything that is not one packed row.

    query (1, H, N, D), key/value (1, H_kv, N, D), ``cu_seq_lens_q`` (S+1,) segment starts and the
    row length -> (1, N, H, D), the layout transformers' attention functions return. The mask the
    model built for the row is not needed: the segments carry the same information.
    ``shared_prefix`` (S,), from :class:`SharedPrefixCollator`: the segment whose keys a segment also
    sees in full (its shared prompt prefix), or -1.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    lengths = cu_seq_lens_q.diff().tolist()
    # split, not slicing: its backward is one concatenation, where each slice's backward would
    # write its gradient into a zero tensor of the whole row.
    qs, ks, vs = query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2)
    parents = [-1] * len(lengths) if shared_prefix is None else shared_prefix.tolist()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    parts = []
    for q, k, v, parent in zip(qs, ks, vs, parents):
        if q.shape[2] == 0:
            continue
        if parent < 0:
            parts.append(sdpa(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=True))
            continue
        # the whole prefix, then causal over the segment itself (lower-right aligned)
        n, p = q.shape[2], ks[parent].shape[2]
        mask = torch.ones(n, p + n, dtype=torch.bool, device=q.device).tril(p)
        parts.append(sdpa(q, torch.cat([ks[parent], k], dim=2), torch.cat([vs[parent], v], dim=2), attn_mask=mask,
                          dropout_p=dropout, scale=scaling, enable_gqa=True))
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


# --------------------------------------------------------------------------- shared prompt prefixes

#: Shorter shared starts are not worth a segment of their own.
MIN_SHARED_PREFIX = 8


def _first_scored(labels: list[int]) -> int:
    return next((i for i, x in enumerate(labels) if x != -100), len(labels))


def _common(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit]):
        if x != y:
            break
        n += 1
    return n


def prefix_groups(features: list[dict[str, Any]], min_prefix: int = MIN_SHARED_PREFIX) -> list[tuple[int, list[int]]]:
    """``(p, members)``: the examples (indices into ``features``) that share their first ``p`` tokens.

    A shared prefix ends before the position that predicts an example's first scored label (that
    position's logits are each example's own), and leaves every member at least one token. Examples
    are taken in token order (equal starts are neighbours) and greedily grouped while joining does
    not shrink the tokens saved, ``(members - 1) * p``; a group of one has ``p = 0``.
    """
    ids = [list(f["input_ids"]) for f in features]
    limit = [max(0, min(_first_scored(list(f.get("labels", f["input_ids"]))) - 1, len(i) - 1)) for f, i in zip(features, ids)]
    groups: list[tuple[int, list[int]]] = []
    for j in sorted(range(len(ids)), key=lambda j: ids[j]):
        if groups:
            p, members = groups[-1]
            first = members[0]
            q = _common(ids[first], ids[j], min(limit[first] if len(members) == 1 else p, limit[j]))
            if q >= min_prefix and len(members) * q >= (len(members) - 1) * p:
                groups[-1] = (q, members + [j])
                continue
        groups.append((0, [j]))
    return [(p if len(m) > 1 else 0, m) for p, m in groups]


class SharedPrefixCollator:
    """A padding-free row in which examples that share a prompt prefix share its computation.

    Output as the padding-free collator's (``input_ids``, ``labels``, ``position_ids`` (1, N),
    ``cu_seq_lens_q/k`` segment starts, ``max_length_q/k``) plus ``shared_prefix`` (S,): each
    segment's prefix segment or -1, which :func:`segment_sdpa_attention` reads. A feature's
    ``loss_weight`` becomes ``token_weights`` (1, N), as :class:`WeightedCollator` does.
    ``example_count`` / ``example_tokens`` (ints) say what the row stands for unshared.
    """

    def __init__(self, pad_token_id: int, min_prefix: int = MIN_SHARED_PREFIX) -> None:
        self.pad_token_id = pad_token_id
        self.min_prefix = min_prefix

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids_out: list[int] = []
        labels_out: list[int] = []
        pos_out: list[int] = []
        weights_out: list[float] = []
        starts: list[int] = []
        parents: list[int] = []

        def segment(ids: list[int], labels: list[int], first_pos: int, parent: int, weight: float) -> None:
            starts.append(len(ids_out))
            parents.append(parent)
            ids_out.extend(ids)
            labels_out.extend(labels)
            pos_out.extend(range(first_pos, first_pos + len(ids)))
            weights_out.extend([weight] * len(ids))

        for p, members in prefix_groups(features, self.min_prefix):
            parent = -1
            if p:
                parent = len(starts)
                first = features[members[0]]  # never scored: any weight would do; its first example's
                segment(list(first["input_ids"][:p]), [-100] * p, 0, -1, float(first.get(WEIGHT_COLUMN, 1.0)))
            for j in members:
                f = features[j]
                ids = list(f["input_ids"])
                labels = list(f.get("labels", ids))
                labels[0] = -100  # an example's first token is never a target (as in the padding-free collator)
                segment(ids[p:], labels[p:], p, parent, float(f.get(WEIGHT_COLUMN, 1.0)))
        bounds = torch.tensor(starts + [len(ids_out)], dtype=torch.int32)
        out: dict[str, Any] = {
            "input_ids": torch.tensor([ids_out], dtype=torch.long),
            "labels": torch.tensor([labels_out], dtype=torch.long),
            "position_ids": torch.tensor([pos_out], dtype=torch.long),
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": int(bounds.diff().max()),
            "max_length_k": int(bounds.diff().max()),
            "shared_prefix": torch.tensor(parents, dtype=torch.long),
            "example_count": len(features),
            "example_tokens": sum(len(f["input_ids"]) for f in features),
        }
        if any(WEIGHT_COLUMN in f for f in features):
            out["token_weights"] = torch.tensor([weights_out], dtype=torch.float32)
        return out
