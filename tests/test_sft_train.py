"""SFT training on the tiny model: loss only on answer tokens, loss goes down, the adapter serves
through the engine, the stage writes adapter + merged model + card, and training resumes."""

from __future__ import annotations

import json
import math

import pytest

from domain_lm.config import SftSection, build_config
from domain_lm.data.sft_data import Record, render_example
from domain_lm.train import sft as T

from .conftest import REPO, requires_vllm

TEMPLATES = str(REPO / "task_templates")


@pytest.fixture(scope="module")
def registry():
    from domain_lm.tasks import TemplateRegistry

    return TemplateRegistry.load(TEMPLATES)


def _section(**train) -> SftSection:
    base = {"batch_size": 4, "max_seq_len": 512, "logging_steps": 1, "save_steps": 1000, "learning_rate": 3e-3, "warmup_ratio": 0.0,
            "lr_scheduler": "constant"}
    return SftSection(lora={"r": 8, "alpha": 16, "dropout": 0.0}, train={**base, **train})


def _sentiment_examples(registry, n: int):
    from domain_lm.data.demo_tasks import demo_examples

    t = registry.get("sentiment")
    exs = demo_examples(t, "en")[:n]
    return t, [render_example(t, Record("sentiment", "en", e["inputs"], e["output"])) for e in exs], exs


def test_loss_mask_covers_only_the_answer(tmp_path, tiny_model_dir, registry):
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    _, examples, _ = _sentiment_examples(registry, 3)
    trainer = T.build_trainer(tiny_model_dir, examples, _section(max_steps=1), tmp_path / "w")
    for row, ex in zip(trainer.train_dataset, examples):
        ids, labels = row["input_ids"], row["labels"]
        k = next(i for i, x in enumerate(labels) if x != -100)
        assert labels[k:] == ids[k:] and all(x == -100 for x in labels[:k])
        prompt = tok.apply_chat_template(ex["messages"][:-1], add_generation_prompt=True, tokenize=False)
        assert tok.decode(ids[:k]) == prompt  # exactly what the engine sends
        assert tok.decode(ids[k:]) == ex["messages"][-1]["content"] + "<|im_end|>\n"  # answer + end of turn
    batch = trainer.data_collator([trainer.train_dataset[0]])
    row = trainer.train_dataset[0]
    assert batch["labels"][0].tolist() == row["labels"]  # the collator keeps the mask


def test_tiny_sft_lowers_loss_and_adapter_serves(tmp_path, tiny_model_dir, registry):
    from domain_lm.inference import create_engine
    from domain_lm.inference.tasks import TaskRunner

    t, _, raw = _sentiment_examples(registry, 16)
    inputs = [e["inputs"] for e in raw]
    engine = create_engine(tiny_model_dir, kind="hf")
    try:
        before = [a.output for a in TaskRunner(engine).run_batch(t, inputs, lang="en")]
    finally:
        engine.close()
    # Teach the label the untrained model picks least, so a served adapter is unmistakable.
    target = min(t.output.labels, key=before.count)
    examples = [render_example(t, Record("sentiment", "en", x, target)) for x in inputs]
    m = T.train_sft(tiny_model_dir, examples, _section(max_steps=16, learning_rate=1e-2), tmp_path / "work", tmp_path / "adapter")
    first = sum(r["loss"] for r in m.history[:3]) / 3
    last = sum(r["loss"] for r in m.history[-3:]) / 3
    # The tiny random model's logits are bounded by its small tied embeddings (LoRA does not touch
    # them), so its loss floor is ~ln(V) - 2.6; a drop of a fifth is what learning looks like here.
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    engine = create_engine(tiny_model_dir, kind="hf", adapters={"sft": str(tmp_path / "adapter")})
    try:
        answers = TaskRunner(engine).run_batch(t, inputs, lang="en", adapter="sft")
    finally:
        engine.close()
    assert all(a.adapter == "sft" for a in answers)
    after = [a.output for a in answers]
    assert after.count(target) >= 14 > before.count(target), (target, before, after)


def test_resume_continues_from_checkpoint(tmp_path, tiny_model_dir, registry):
    _, examples, _ = _sentiment_examples(registry, 8)
    a = T.train_sft(tiny_model_dir, examples, _section(max_steps=2, save_steps=2), tmp_path / "w", tmp_path / "a1")
    assert a.steps == 2 and a.resumed_from is None
    assert a.samples_per_s > 0 and a.tokens_per_s > 10 * a.samples_per_s  # every example has 10+ tokens
    b = T.train_sft(tiny_model_dir, examples, _section(max_steps=4, save_steps=2), tmp_path / "w", tmp_path / "a2", resume=True)
    assert b.resumed_from.endswith("checkpoint-2") and b.steps == 4
    assert [r["step"] for r in b.history] == [1, 2, 3, 4]  # the resumed run continues the same curve


def test_trainer_defaults_are_the_fast_ones(tmp_path, tiny_model_dir, registry):
    from domain_lm.train.packing import SEGMENT_ATTENTION
    from domain_lm.train.sft_trainer import AnswerSFTTrainer

    _, examples, _ = _sentiment_examples(registry, 4)
    trainer = T.build_trainer(tiny_model_dir, examples, _section(max_steps=1), tmp_path / "w")
    assert isinstance(trainer, AnswerSFTTrainer)
    assert trainer.args.gradient_checkpointing is False  # TRL's SFTConfig would turn it on
    assert trainer.model.get_base_model().config._attn_implementation == SEGMENT_ATTENTION
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one padding-free row
    total = sum(len(trainer.train_dataset[i]["input_ids"]) for i in range(4))
    # the task's shared prompt start (chat header, system prompt) is in the row once
    assert batch["example_tokens"] == total and batch["example_count"] == 4
    assert batch["input_ids"].shape[1] < total and (batch["shared_prefix"] >= 0).any()


def test_shared_prefix_training_learns_what_unshared_training_learns(tmp_path, tiny_model_dir, registry):
    """The whole trainer with and without shared prompt prefixes: the same loss curve, fewer tokens computed."""
    _, examples, _ = _sentiment_examples(registry, 12)
    section = _section(max_steps=3, batch_size=4, learning_rate=1e-2)
    section.peft.lora.dropout = 0.0
    plain = _losses(T.build_trainer(tiny_model_dir, examples, section, tmp_path / "a"))
    section.shared_prefix = False
    unshared_trainer = T.build_trainer(tiny_model_dir, examples, section, tmp_path / "b")
    assert "shared_prefix" not in unshared_trainer.data_collator([unshared_trainer.train_dataset[i] for i in range(4)])
    unshared = _losses(unshared_trainer)
    assert len(plain) == len(unshared) == 3
    assert plain == pytest.approx(unshared, abs=1e-5)
    assert plain[-1] != pytest.approx(plain[0], abs=1e-3)


def _losses(trainer) -> list[float]:
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_padding_free_training_learns_what_padded_training_learns(tmp_path, tiny_model_dir, registry):
    """Same examples, same order, same seed: the padded and the padding-free runs log the same
    loss curve (LoRA dropout off, so no random mask depends on the batch layout)."""
    _, examples, _ = _sentiment_examples(registry, 12)
    section = _section(max_steps=3, batch_size=4, learning_rate=1e-2)
    section.peft.lora.dropout = 0.0
    padded = _losses(T.build_trainer(tiny_model_dir, examples, section, tmp_path / "a", padding_free=False))
    flat = _losses(T.build_trainer(tiny_model_dir, examples, section, tmp_path / "b", padding_free=True))
    assert len(padded) == len(flat) == 3
    assert flat == pytest.approx(padded, abs=1e-5)
    assert padded[-1] != pytest.approx(padded[0], abs=1e-3)  # it trained: the comparison is not of constants


def test_group_by_length_pads_less(tmp_path, tiny_model_dir, registry):
    t, _, raw = _sentiment_examples(registry, 16)
    # 64 texts of one to four sentences (the sampler sorts within groups of 4 batches, 64 // (4 * 4))
    texts = [(" ".join([raw[i % 16]["inputs"]["text"]] * (1 + i % 4)), raw[i % 16]["output"]) for i in range(64)]
    examples = [render_example(t, Record("sentiment", "en", {"text": text}, label)) for text, label in texts]

    def padding(group: bool) -> int:
        section = _section(max_steps=1)
        trainer = T.build_trainer(tiny_model_dir, examples, section, tmp_path / str(group), padding_free=False, group_by_length=group)
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == len(trainer.train_dataset) == len(examples)
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    grouped, shuffled = padding(True), padding(False)
    assert grouped < shuffled / 2, (grouped, shuffled)


def test_trl_packing_trains_with_segment_attention(tmp_path, tiny_model_dir, registry):
    from domain_lm.train.packing import SEGMENT_ATTENTION

    _, examples, _ = _sentiment_examples(registry, 8)
    train = {"max_steps": 2, "batch_size": 2, "max_seq_len": 512, "logging_steps": 1, "save_steps": 1000}
    section = SftSection(packing=True, lora={"r": 4, "alpha": 8}, train=train)
    trainer = T.build_trainer(tiny_model_dir, examples, section, tmp_path / "w")
    assert trainer.model.get_base_model().config._attn_implementation == SEGMENT_ATTENTION
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["cu_seq_lens_q"].numel() - 1 > batch["input_ids"].shape[0]  # several examples per packed row
    losses = _losses(trainer)
    assert len(losses) == 2 and all(x > 0 for x in losses)


def test_sft_stage_writes_adapter_model_card_and_curve(tmp_path, tiny_model_dir):
    from domain_lm.models.loading import load_causal_lm
    from domain_lm.pipeline.run import run_stage

    cfg = build_config(
        {
            "run": {"name": "s", "output_dir": str(tmp_path / "runs")},
            "base_model": {"name": str(tiny_model_dir)},
            "tasks": {"templates_dir": TEMPLATES, "demo_tasks": ["sentiment", "business_line"], "demo_langs": ["en"]},
            "sft": {"examples_per_task": None, "max_examples_per_task": 16, "per_task_adapters": True, "lora": {"r": 4, "alpha": 8},
                    "train": {"max_steps": 3, "batch_size": 2, "max_seq_len": 512, "logging_steps": 1, "save_steps": 2}},
        }
    )
    run_stage("base", cfg)
    res, skipped = run_stage("sft", cfg)
    assert not skipped
    for name in ("adapter", "model", "data", "eval_records", "loss_plot", "adapters"):
        assert res.artefact(name).exists(), name
    assert (res.artefact("adapters") / "sentiment" / "adapter_config.json").is_file()
    assert res.metrics["steps"] == 3 and res.metrics["train_examples"] == 32
    assert res.metrics["final_loss"] > 0 and "final_loss/business_line" in res.metrics
    assert "Instruction-tuned" in (res.path / "MODEL_CARD.md").read_text()
    load_causal_lm(res.artefact("model"))  # the merged model loads on its own
    assert (res.artefact("data") / "eval_records.jsonl").read_text().strip()
    _, again = run_stage("sft", cfg)
    assert again  # unchanged inputs: reused


@pytest.mark.vllm
@pytest.mark.slow
@requires_vllm
def test_adapter_serves_through_vllm(tmp_path, tiny_model_dir, registry):
    from domain_lm.inference import create_engine
    from domain_lm.inference.tasks import TaskRunner

    t, examples, raw = _sentiment_examples(registry, 8)
    T.train_sft(tiny_model_dir, examples, _section(max_steps=2), tmp_path / "w", tmp_path / "adapter")
    adapters = {"sft": str(tmp_path / "adapter")}
    engine = create_engine(tiny_model_dir, kind="vllm", adapters=adapters, gpu_memory_utilization=0.05, max_lora_rank=8)
    try:
        answers = TaskRunner(engine).run_batch(t, [e["inputs"] for e in raw[:4]], lang="en", adapter="sft")
    finally:
        engine.close()
    assert all(a.output in t.output.labels and a.adapter == "sft" for a in answers)
    json.dumps([a.model_dump() for a in answers])


def test_task_loss_weighting_reaches_the_loss_through_the_trainer(tmp_path, tiny_model_dir, registry):
    """sft.loss_weighting: task. The weight column survives TRL's dataset preparation, the collator
    spreads it over each example's tokens, and training runs on it."""
    from domain_lm.train.packing import WEIGHT_COLUMN

    _, examples, _ = _sentiment_examples(registry, 4)
    long = [{**e, "task": "report_summary", "messages": [*e["messages"][:-1], {"role": "assistant", "content": "Revenue rose. " * 12}]}
            for e in examples]
    mixed = [*examples, *long]
    section = _section(max_steps=2, batch_size=8)
    section.loss_weighting = "task"
    trainer = T.build_trainer(tiny_model_dir, mixed, section, tmp_path / "w")
    from domain_lm.models.loading import load_tokenizer

    want = T.example_task_weights(mixed, load_tokenizer(tiny_model_dir))
    assert want[0] > 5 * want[-1]  # one-word answers weigh more per token than 36-word ones
    assert sorted(trainer.train_dataset[WEIGHT_COLUMN]) == pytest.approx(sorted(want))
    batch = next(iter(trainer.get_train_dataloader()))
    weights = batch["token_weights"]
    assert weights.shape == batch["labels"].shape
    assert sorted(weights.unique().tolist()) == pytest.approx(sorted(set(want)), rel=1e-6)  # both tasks' weights, in the batch of all eight
    losses = _losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
