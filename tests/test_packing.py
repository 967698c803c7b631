"""Padding-free packed batches and the completion-only LM head compute exactly what the plain
padded batch computes: per-example losses, the batch loss and the gradients (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from domain_lm.train.answer_loss import answer_loss, scored_positions
from domain_lm.train.packing import SEGMENT_ATTENTION, padding_free_collator, register_segment_attention, use_segment_attention

PAD = 0
LENGTHS = (9, 17, 5, 12)  # unequal, so the padded batch really pads
ANSWER = (2, 3, 1, 2)  # scored tokens at the end of each example, as in SFT


def _model(attn: str = "sdpa", seed: int = 0):
    """A tiny random Llama with grouped-query attention (4 query heads share 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=PAD,
    )
    model = LlamaForCausalLM(cfg).float()
    model.set_attn_implementation(attn)
    return model


def _features(seed: int = 1) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, a in zip(LENGTHS, ANSWER):
        ids = torch.randint(1, 97, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n - a) + ids[n - a :]})
    return out


def _padded(features):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=PAD)(features)


def _only(features, i):
    """The same examples with only example ``i`` scored (its loss, in the others' company)."""
    return [f if j == i else {**f, "labels": [-100] * len(f["labels"])} for j, f in enumerate(features)]


def _plain_loss(model, batch) -> torch.Tensor:
    """The reference: the model's own causal-LM loss over the full (B, T, V) logits."""
    keys = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    return model(**{k: v for k, v in batch.items() if k in keys}, labels=batch["labels"]).loss


def test_collator_flattens_with_positions_and_boundaries():
    feats = _features()
    row = padding_free_collator(PAD)(feats)
    n = sum(LENGTHS)
    assert row["input_ids"].shape == (1, n) and "attention_mask" not in row
    starts = [0, 9, 26, 31, 43]
    assert row["cu_seq_lens_q"].tolist() == starts
    assert row["position_ids"][0].tolist() == [p for k in LENGTHS for p in range(k)]
    # the first token of each example is never a target (it would be predicted from the previous example)
    assert all(row["labels"][0, s] == -100 for s in starts[:-1])
    assert row["labels"][0].ne(-100).sum() == sum(ANSWER)


def test_scored_positions_is_the_union_of_next_token_labels():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    # position t is kept when labels[:, t + 1] is scored in some row
    assert scored_positions(labels).tolist() == [0, 1, 2]
    assert scored_positions(torch.full((2, 4), -100)).numel() == 0


@pytest.mark.parametrize("attn", ["sdpa", SEGMENT_ATTENTION])
def test_packed_row_gives_each_example_its_unpacked_loss(attn):
    """Each example's loss in a packed row equals its loss alone, under transformers' sdpa (which
    honours position_ids by building a block-diagonal mask) and under the per-segment attention."""
    register_segment_attention()
    model = _model(attn).eval()
    feats = _features()
    pack = padding_free_collator(PAD)
    with torch.no_grad():
        for i, f in enumerate(feats):
            alone = _plain_loss(model, _padded([f]))
            in_row = answer_loss(model, pack(_only(feats, i))).loss
            in_padded = answer_loss(model, _padded(_only(feats, i))).loss
            assert in_row.item() == pytest.approx(alone.item(), abs=1e-5), i
            assert in_padded.item() == pytest.approx(alone.item(), abs=1e-5), i


def test_a_row_without_boundaries_does_leak_across_examples():
    """The control: concatenated without restarted positions/boundaries, later examples see the
    earlier ones and their losses change, which the checks above would catch."""
    model = _model(SEGMENT_ATTENTION).eval()
    feats = _features()
    row = padding_free_collator(PAD)(_only(feats, 1))
    leaky = {"input_ids": row["input_ids"], "labels": row["labels"]}
    with torch.no_grad():
        alone = _plain_loss(model, _padded([feats[1]])).item()
        assert abs(answer_loss(model, leaky).loss.item() - alone) > 1e-3


def _lora_grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("packed", [False, True])
def test_answer_head_loss_and_grads_equal_the_full_head(packed):
    from peft import LoraConfig, get_peft_model

    base = _model()
    use_segment_attention(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False))
    model.train()
    feats = _features()
    batch = padding_free_collator(PAD)(feats) if packed else _padded(feats)
    plain = _plain_loss(model, batch)
    ref = _lora_grads(model, plain)
    fast = answer_loss(model, batch)
    got = _lora_grads(model, fast.loss)
    assert fast.loss.item() == pytest.approx(plain.item(), abs=1e-5)
    assert fast.tokens == sum(ANSWER)
    assert ref.keys() == got.keys() and len(ref) > 0
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_and_padded_training_give_the_same_gradients():
    """A packed row and the padded batch of the same examples: same loss, same LoRA gradients."""
    from peft import LoraConfig, get_peft_model

    base = _model()
    use_segment_attention(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False))
    feats = _features()
    padded = answer_loss(model, _padded(feats))
    g_padded = _lora_grads(model, padded.loss)
    packed = answer_loss(model, padding_free_collator(PAD)(feats))
    g_packed = _lora_grads(model, packed.loss)
    assert packed.loss.item() == pytest.approx(padded.loss.item(), abs=1e-5)
    for name in g_padded:
        torch.testing.assert_close(g_packed[name], g_padded[name], atol=1e-5, rtol=1e-4, msg=name)


def test_num_items_in_batch_sets_the_denominator():
    model = _model().eval()
    batch = _padded(_features())
    with torch.no_grad():
        mean = answer_loss(model, batch)
        summed = answer_loss(model, batch, num_items_in_batch=1)
        assert summed.loss.item() == pytest.approx(mean.loss.item() * sum(ANSWER), rel=1e-6)
        assert 0 <= mean.correct <= mean.tokens and mean.entropy_sum > 0


def test_a_batch_without_answers_gives_a_differentiable_zero():
    model = _model()
    feats = [{**f, "labels": [-100] * len(f["labels"])} for f in _features()]
    out = answer_loss(model, padding_free_collator(PAD)(feats))
    assert out.loss.item() == 0.0 and out.tokens == 0
    out.loss.backward()  # no error: the step just contributes nothing


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mask_based_attention_switches_to_segments_once(attn):
    model = _model(attn)
    assert use_segment_attention(model) == SEGMENT_ATTENTION
    assert use_segment_attention(model) == SEGMENT_ATTENTION  # idempotent


@pytest.mark.parametrize("packed", [False, True])
def test_per_example_loss_weighs_every_answer_the_same(packed):
    """With per_example, the batch loss is the mean of the examples' own mean answer NLLs (packed
    row or padded batch alike), not the mean over tokens where long answers dominate."""
    register_segment_attention()
    model = _model(SEGMENT_ATTENTION).eval()
    feats = _features()
    collate = padding_free_collator(PAD) if packed else _padded
    with torch.no_grad():
        each = [_plain_loss(model, _padded([f])).item() for f in feats]
        got = answer_loss(model, collate(feats), per_example=True)
        by_token = answer_loss(model, collate(feats)).loss.item()
    assert got.loss.item() == pytest.approx(sum(each) / len(each), abs=1e-5)
    assert by_token == pytest.approx(sum(e * a for e, a in zip(each, ANSWER)) / sum(ANSWER), abs=1e-5)
    assert abs(got.loss.item() - by_token) > 1e-3 and got.tokens == sum(ANSWER)


def test_task_weights_equalise_tasks_and_keep_tokens_equal_within_a_task():
    from domain_lm.train.answer_loss import task_weights

    tasks = ["sentiment", "sentiment", "entities", "entities"]
    lengths = [2, 2, 3, 57]  # an empty entity list beside a long one
    w = task_weights(tasks, lengths)
    assert w[0] == w[1] and w[2] == w[3]  # within a task every token weighs the same: no bias to short answers
    assert w[0] * 2 == pytest.approx(w[2] * 30)  # per example, the tasks' mean answers weigh the same
    assert sum(wi * n for wi, n in zip(w, lengths)) == pytest.approx(sum(lengths))  # the tokens' total is kept
    assert task_weights([], []) == []


@pytest.mark.parametrize("packed", [False, True])
def test_example_weights_reach_every_token_of_their_example(packed):
    from domain_lm.train.packing import WEIGHT_COLUMN, WeightedCollator

    register_segment_attention()
    model = _model(SEGMENT_ATTENTION).eval()
    feats = _features()
    weights = [0.5, 2.0, 3.0, 1.0]
    inner = padding_free_collator(PAD) if packed else _padded
    batch = WeightedCollator(inner)([{**f, WEIGHT_COLUMN: w} for f, w in zip(feats, weights)])
    assert batch["token_weights"].shape == batch["labels"].shape
    with torch.no_grad():
        each = [_plain_loss(model, _padded([f])).item() for f in feats]
        got = answer_loss(model, batch).loss.item()
    expected = sum(w * e * a for w, e, a in zip(weights, each, ANSWER)) / sum(ANSWER)
    assert got == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- shared prompt prefixes

PREFIX = 14  # tokens three of the four examples start with (a chat header and system prompt)


def _sharing_features(seed: int = 2) -> list[dict[str, list[int]]]:
    """The examples of ``_features`` where all but the third start with the same PREFIX tokens."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(1, 97, (PREFIX,), generator=g).tolist()
    lengths = (PREFIX + 9, PREFIX + 17, 5, PREFIX + 12)
    out = []
    for i, (n, a) in enumerate(zip(lengths, ANSWER)):
        ids = torch.randint(1, 97, (n,), generator=g).tolist()
        if i != 2:
            ids[:PREFIX] = head
            ids[PREFIX] = 1 + i  # each leaves the prefix with its own token
        out.append({"input_ids": ids, "labels": [-100] * (n - a) + ids[n - a :]})
    return out


def test_shared_prefix_row_computes_the_prefix_once():
    from domain_lm.train.packing import SharedPrefixCollator

    feats = _sharing_features()
    row = SharedPrefixCollator(PAD)(feats)
    total = sum(len(f["input_ids"]) for f in feats)
    assert row["input_ids"].shape == (1, total - 2 * PREFIX)  # three examples, one prefix
    assert row["example_count"] == 4 and row["example_tokens"] == total
    assert row["labels"][0].ne(-100).sum() == sum(ANSWER)  # every answer token still scored, once
    parents = row["shared_prefix"].tolist()
    linked = [p for p in parents if p >= 0]
    assert len(parents) == 5 and len(linked) == 3 and len(set(linked)) == 1  # prefix, its three suffixes, the other example
    bounds = row["cu_seq_lens_q"].tolist()
    prefix_seg = linked[0]
    assert bounds[prefix_seg + 1] - bounds[prefix_seg] == PREFIX
    pos = row["position_ids"][0]
    for seg, parent in enumerate(parents):  # a suffix goes on at the position where its prefix stops
        if parent >= 0:
            assert pos[bounds[seg]].item() == PREFIX


def test_a_prefix_stops_before_the_position_that_predicts_an_answer():
    from domain_lm.train.packing import prefix_groups

    prompt = list(range(1, 21))
    same_prompt = [{"input_ids": prompt + [50, 51], "labels": [-100] * 20 + [50, 51]},
                   {"input_ids": prompt + [60], "labels": [-100] * 20 + [60]}]
    (p, members), = prefix_groups(same_prompt)
    assert members == [0, 1] or members == [1, 0]
    assert p == 19  # position 19 predicts each one's first answer token: it stays each one's own
    identical = [same_prompt[0], same_prompt[0]]
    (p, _), = prefix_groups(identical)
    assert p == 19
    short = [{"input_ids": prompt[:5] + [7], "labels": [-100] * 5 + [7]}, {"input_ids": prompt[:5] + [8], "labels": [-100] * 5 + [8]}]
    assert [g[0] for g in prefix_groups(short)] == [0, 0]  # 4 shared tokens: below MIN_SHARED_PREFIX, not shared


@pytest.mark.parametrize("per_example", [False, True])
def test_shared_prefix_gives_the_unshared_loss_and_gradients(per_example):
    """The same LoRA loss and gradients as the plain padding-free row (fp32, 1e-5): autograd sums the
    suffixes' gradients into the one prefix."""
    from peft import LoraConfig, get_peft_model

    from domain_lm.train.packing import SharedPrefixCollator

    base = _model()
    use_segment_attention(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False))
    feats = _sharing_features()
    plain = answer_loss(model, padding_free_collator(PAD)(feats), per_example=per_example)
    g_plain = _lora_grads(model, plain.loss)
    shared = answer_loss(model, SharedPrefixCollator(PAD)(feats), per_example=per_example)
    g_shared = _lora_grads(model, shared.loss)
    assert shared.tokens == plain.tokens == sum(ANSWER)
    assert shared.loss.item() == pytest.approx(plain.loss.item(), abs=1e-5)
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_shared_prefix_without_its_attention_would_be_wrong():
    """The control: the same row under plain sdpa (no prefix links) changes the suffixes' losses."""
    from domain_lm.train.packing import SharedPrefixCollator

    register_segment_attention()
    model = _model(SEGMENT_ATTENTION).eval()
    feats = _sharing_features()
    row = SharedPrefixCollator(PAD)(feats)
    with torch.no_grad():
        right = answer_loss(model, row).loss.item()
        unlinked = answer_loss(model, {k: v for k, v in row.items() if k != "shared_prefix"}).loss.item()
        plain = answer_loss(model, padding_free_collator(PAD)(feats)).loss.item()
    assert right == pytest.approx(plain, abs=1e-5)
    assert abs(unlinked - plain) > 1e-3


def test_shared_prefix_carries_example_weights():
    from domain_lm.train.packing import WEIGHT_COLUMN, SharedPrefixCollator, WeightedCollator

    register_segment_attention()
    model = _model(SEGMENT_ATTENTION).eval()
    weights = [0.5, 2.0, 3.0, 1.0]
    feats = [{**f, WEIGHT_COLUMN: w} for f, w in zip(_sharing_features(), weights)]
    shared = SharedPrefixCollator(PAD)(feats)
    assert shared["token_weights"].shape == shared["labels"].shape
    with torch.no_grad():
        got = answer_loss(model, shared).loss.item()
        ref = answer_loss(model, WeightedCollator(padding_free_collator(PAD))(feats)).loss.item()
    assert got == pytest.approx(ref, abs=1e-5)
