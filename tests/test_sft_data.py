"""SFT data build: renders exactly what the service sends, splits deterministically, filters, imports."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from domain_lm.config import build_config
from domain_lm.data import instruct_formats as IF
from domain_lm.data import records as R
from domain_lm.data import sft_data as S
from domain_lm.errors import DataError

from .conftest import REPO

TEMPLATES = str(REPO / "task_templates")

# Synthetic fixture rows written by the tests (never real data).
ROWS = [
    {"sentence": "Alpha Bank net profit rose 12 percent.", "lab": "POS"},
    {"sentence": "Beta Bank shares slumped after a write-down.", "lab": "NEG"},
    {"sentence": "Gamma Bank will report on 3 May.", "lab": "NEU"},
    {"sentence": "Delta Bank deposits grew strongly.", "lab": "POS"},
    {"sentence": "Epsilon Bank cut its outlook.", "lab": "NEG"},
    {"sentence": "Zeta Bank holds its meeting in June.", "lab": "NEU"},
    {"sentence": "Eta Bank fee income jumped.", "lab": "POS"},
    {"sentence": "Theta Bank impairments rose sharply.", "lab": "NEG"},
    {"sentence": "Iota Bank named a new chair.", "lab": "NEU"},
    {"sentence": "Kappa Bank beat estimates.", "lab": "POS"},
] * 1
LABEL_MAP = {"POS": "positive", "NEG": "negative", "NEU": "neutral"}


@pytest.fixture(scope="module")
def registry():
    from domain_lm.tasks import TemplateRegistry

    return TemplateRegistry.load(TEMPLATES)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from domain_lm.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(tmp_path, data_path, **sft):
    return build_config(
        {
            "tasks": {
                "templates_dir": TEMPLATES,
                "eval_fraction": 0.3,
                "datasets": [
                    {
                        "task": "sentiment",
                        "path": str(data_path),
                        "fields": {"text": "sentence"},
                        "label_field": "lab",
                        "label_map": LABEL_MAP,
                    }
                ],
            },
            # task_weights: the quick profile doubles sentiment; these tests set their own
            "sft": {"variants_per_example": 2, "few_shot_fraction": 0.5, "task_weights": {"sentiment": 1.0}, **sft,
                    "train": {"max_seq_len": 2048}},
        }
    )


def test_build_renders_exactly_what_the_service_sends(tmp_path, registry, tokenizer):
    from domain_lm.inference import GenerationRequest, render_prompt

    data = _write_jsonl(tmp_path / "s.jsonl", ROWS)
    stats = S.build_sft_data(_cfg(tmp_path, data), tokenizer, tmp_path / "out", registry=registry)
    t = registry.get("sentiment")
    train = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (tmp_path / "out" / "eval.jsonl").read_text().splitlines()]
    records = R.read_records(tmp_path / "out" / "eval_records.jsonl")
    assert stats.train_examples["sentiment"] == len(train) > 0 and len(records) == len(evals) > 0

    by_text = {r["sentence"]: LABEL_MAP[r["lab"]] for r in ROWS}
    for ex in train:
        text = next(s for s in by_text if s in ex["messages"][-2]["content"])
        expected = t.render_messages({"text": text}, lang="en", variant=ex["variant"], few_shot=ex["few_shot"])
        assert ex["messages"][:-1] == expected
        assert ex["messages"][-1] == {"role": "assistant", "content": t.target_text(by_text[text], "en")}
    assert any(ex["few_shot"] > 0 for ex in train) and any(ex["few_shot"] == 0 for ex in train)
    assert len({ex["variant"] for ex in train}) > 1  # instruction diversity

    for ex, rec in zip(evals, records):
        prompt = ex["messages"][:-1]
        assert prompt == t.render_messages(rec.inputs, lang=rec.lang)
        # The prompt text the model is trained to continue == what the engines send.
        assert tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) == render_prompt(
            tokenizer, GenerationRequest(messages=t.render_messages(rec.inputs, lang=rec.lang))
        )
        assert ex["messages"][-1]["content"] == t.target_text(rec.output, "en")

    # No record is in both splits.
    train_texts = {next(s for s in by_text if s in ex["messages"][-2]["content"]) for ex in train}
    assert not train_texts & {r.inputs["text"] for r in records}


def test_split_is_deterministic_and_stable_when_data_grows(registry):
    t = registry.get("sentiment")
    recs = [R.TaskRecord("sentiment", "en", {"text": f"Bank {i} results."}, "neutral") for i in range(200)]
    a_train, a_eval = R.split_records(recs, 0.2, seed=7)
    b_train, b_eval = R.split_records(list(reversed(recs)), 0.2, seed=7)
    assert {r.key() for r in a_eval} == {r.key() for r in b_eval}
    assert 20 <= len(a_eval) <= 60  # about 20 % of 200
    more = recs + [R.TaskRecord("sentiment", "en", {"text": f"Other {i}."}, "neutral") for i in range(100)]
    _, c_eval = R.split_records(more, 0.2, seed=7)
    assert {r.key() for r in a_eval} <= {r.key() for r in c_eval}  # old eval records never move
    _, d_eval = R.split_records(recs, 0.2, seed=8)
    assert {r.key() for r in d_eval} != {r.key() for r in a_eval}
    assert t.name == "sentiment"


def test_csv_mapping_dedupe_and_errors(tmp_path, registry, tokenizer):
    import pandas as pd

    rows = ROWS + ROWS[:3]  # three duplicates
    pd.DataFrame(rows).to_csv(tmp_path / "s.csv", index=False)
    cfg = _cfg(tmp_path, tmp_path / "s.csv")
    stats = S.build_sft_data(cfg, tokenizer, tmp_path / "out", registry=registry)
    assert sum(stats.records.values()) == len(ROWS) and stats.duplicates >= 3

    bad = build_config(
        {
            "tasks": {
                "templates_dir": TEMPLATES,
                "datasets": [{"task": "sentiment", "path": str(tmp_path / "s.csv"), "fields": {"text": "body"}}],
            }
        }
    )
    with pytest.raises(DataError, match="body"):
        S.build_sft_data(bad, tokenizer, tmp_path / "bad", registry=registry)
    unmapped = build_config(
        {
            "tasks": {
                "templates_dir": TEMPLATES,
                "datasets": [{"task": "sentiment", "path": str(tmp_path / "s.csv"), "fields": {"text": "sentence"}, "label_field": "lab"}],
            }
        }
    )
    with pytest.raises(DataError, match="label_map"):
        S.build_sft_data(unmapped, tokenizer, tmp_path / "bad2", registry=registry)


def test_token_length_filter_and_task_weights(tmp_path, registry, tokenizer):
    data = _write_jsonl(tmp_path / "s.jsonl", ROWS)
    cfg = _cfg(tmp_path, data)
    base = S.build_sft_data(cfg, tokenizer, tmp_path / "a", registry=registry)

    cfg2 = _cfg(tmp_path, data, task_weights={"sentiment": 2.0})
    doubled = S.build_sft_data(cfg2, tokenizer, tmp_path / "b", registry=registry)
    assert doubled.train_examples["sentiment"] == 2 * base.train_examples["sentiment"]

    lengths = sorted(
        S.token_length(tokenizer, json.loads(x)["messages"]) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    )
    limit = lengths[len(lengths) // 2]
    cfg3 = _cfg(tmp_path, data)
    cfg3.sft.train.max_seq_len = limit
    cut = S.build_sft_data(cfg3, tokenizer, tmp_path / "c", registry=registry)
    assert cut.too_long == sum(n > limit for n in lengths) > 0
    kept = [json.loads(x)["messages"] for x in (tmp_path / "c" / "train.jsonl").read_text().splitlines()]
    assert all(S.token_length(tokenizer, m) <= limit for m in kept)


def test_demo_tasks_cover_every_synthetic_bundled_task_in_its_languages(registry):
    from domain_lm.data.demo_tasks import demo_examples

    for name in registry.names():
        t = registry.get(name)
        if name == "customer_intent":  # real data only (Banking77, embedded): no synthetic generator
            assert demo_examples(t, "en") == []
            continue
        for lang in t.languages:
            exs = demo_examples(t, lang)
            assert len(exs) >= 100, (name, lang, len(exs))
            for ex in exs[:50]:
                t.validate_inputs(ex["inputs"])
                assert t.parse_output(t.target_text(ex["output"], lang), lang) == ex["output"]
            if t.output.classes is not None:
                counts = Counter(ex["output"] for ex in exs)
                assert len(exs) >= 300 and set(counts) == set(t.output.classes)
                assert max(counts.values()) <= 2 * min(counts.values())  # balanced enough to learn from
    assert demo_examples(registry.get("sentiment"), "en") == demo_examples(registry.get("sentiment"), "en")  # deterministic


def test_demo_build_mixes_tasks_and_languages(tmp_path, registry, tokenizer):
    cfg = build_config(
        {
            "tasks": {"templates_dir": TEMPLATES, "demo_tasks": ["sentiment", "entities"], "demo_langs": ["en", "zh"]},
            "sft": {"train": {"max_seq_len": 2048}},
        }
    )
    stats = S.build_sft_data(cfg, tokenizer, tmp_path / "demo", registry=registry)
    train = [json.loads(x) for x in (tmp_path / "demo" / "train.jsonl").read_text().splitlines()]
    assert set(stats.train_examples) == {"sentiment", "entities"}
    assert {ex["lang"] for ex in train} == {"en", "zh"}
    assert len({S.example_key(ex) for ex in train}) == len(train)  # deduped


def test_alpaca_and_sharegpt_import(tmp_path):
    alpaca = [
        {"instruction": "Define NIM.", "input": "", "output": "Net interest margin."},
        {"instruction": "Translate", "input": "贷款", "output": "loan", "system": "Be brief.", "history": [["Hi", "Hello"]]},
    ]
    (tmp_path / "a.json").write_text(json.dumps(alpaca, ensure_ascii=False))
    share = [
        {
            "conversations": [{"from": "human", "value": "What is CET1?"}, {"from": "gpt", "value": "A capital ratio."}],
            "system": "You are a banker.",
        }
    ]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in share))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "faq": {"file_name": "a.json"},
                "chat": {"file_name": "s.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}},
            }
        )
    )
    got = IF.load_dataset_info(tmp_path / "dataset_info.json")
    assert got["faq"][0]["messages"] == [
        {"role": "user", "content": "Define NIM."},
        {"role": "assistant", "content": "Net interest margin."},
    ]
    assert got["faq"][1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Translate\n贷款"},
        {"role": "assistant", "content": "loan"},
    ]
    assert got["chat"][0]["messages"][0] == {"role": "system", "content": "You are a banker."}
    assert got["chat"][0]["messages"][-1] == {"role": "assistant", "content": "A capital ratio."}
    with pytest.raises(DataError, match="assistant"):
        IF.sharegpt_to_messages({"conversations": [{"from": "human", "value": "hi"}]})
    with pytest.raises(DataError, match="not declared"):
        IF.load_dataset_info(tmp_path / "dataset_info.json", ["missing"])


def test_instruct_sources_join_the_training_set(tmp_path, registry, tokenizer):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Define NIM.", "output": "Net interest margin."}]))
    data = _write_jsonl(tmp_path / "s.jsonl", ROWS)
    cfg = _cfg(tmp_path, data, instruct_sources=[{"path": str(tmp_path / "a.json"), "formatting": "alpaca"}])
    stats = S.build_sft_data(cfg, tokenizer, tmp_path / "out", registry=registry)
    assert stats.train_examples["instruct:a"] == 1


def test_cli_sft_build(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from domain_lm.cli import app

    data = _write_jsonl(tmp_path / "s.jsonl", ROWS)
    args = [
        "sft",
        "build",
        "--out",
        str(tmp_path / "out"),
        "--task",
        "sentiment",
        "--data",
        str(data),
        "--field",
        "text=sentence",
        "--label-field",
        "lab",
        "--model",
        str(tiny_model_dir),
        "-s",
        f"tasks.templates_dir={TEMPLATES}",
    ]
    args += [x for k, v in LABEL_MAP.items() for x in ("--label-map", f"{k}={v}")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert sum(stats["records"].values()) == len(ROWS)
    assert sum(stats["train_records"].values()) + sum(stats["eval_records"].values()) == len(ROWS)
    bad = CliRunner().invoke(app, ["sft", "build", "--out", str(tmp_path / "o2"), "--task", "sentiment", "--model", str(tiny_model_dir)])
    assert bad.exit_code != 0


def test_entity_gold_with_offsets_and_uncovered_types(registry):
    """NER datasets carry offsets and types the task does not cover: offsets are dropped, a type
    mapped to "" is dropped, the rest is mapped; the result satisfies the entities contract."""
    t = registry.get("entities")
    raw = [
        {"text": "Alpha Bank", "type": "ORGANIZATION", "start": 0, "end": 10},
        {"text": "Harry Potter", "type": "BOOK", "start": 20, "end": 32},
        {"text": "Paris", "type": "LOC", "start": 40, "end": 45},
    ]
    value = t.coerce_output(R.map_label(raw, {"ORGANIZATION": "ORG", "BOOK": ""}))
    assert value == [{"text": "Alpha Bank", "type": "ORG"}, {"text": "Paris", "type": "LOC"}]
    assert t.parse_output(t.target_text(value), "en") == value
    # an unmapped type still breaks the contract loudly instead of being dropped silently
    with pytest.raises(Exception, match="BOOK"):
        t.parse_output(t.target_text(t.coerce_output(raw)), "en")


def test_task_balanced_sampling_gives_every_task_the_same_count(tmp_path, registry, tokenizer):
    """examples_per_task: a large task is sampled down, a small one repeated with other phrasings or few-shot prompts."""
    cfg = build_config(
        {
            "tasks": {"templates_dir": TEMPLATES, "demo_tasks": ["sentiment", "extraction"], "demo_langs": ["en"],
                      "demo_datasets": ["twitter_fin_sentiment/sentiment"]},  # extraction: the small synthetic set
            "sft": {"examples_per_task": 240, "few_shot_fraction": 0.0, "task_weights": {"sentiment": 1.0}, "train": {"max_seq_len": 4096}},
        }
    )
    split = R.load_split(cfg, registry)
    small = len(split.train_by_task()["extraction"])
    assert small < 240 < len(split.train_by_task()["sentiment"])
    stats = S.build_sft_data(cfg, tokenizer, tmp_path / "bal", registry=registry)
    assert stats.train_examples == {"sentiment": 240, "extraction": 240}
    train = [json.loads(x) for x in (tmp_path / "bal" / "train.jsonl").read_text().splitlines()]
    extraction = [ex for ex in train if ex["task"] == "extraction"]
    # Repeats are not word-for-word copies: the first pass is zero-shot, repeats use other phrasings or examples.
    assert len({S.example_key(ex) for ex in extraction}) > small and sum(ex["few_shot"] > 0 for ex in extraction) > 0


def test_training_targets_are_answers_the_decoder_can_write(registry):
    """A KPI-EDGAR evidence cut mid-clause is not among the decode-time spans: the target is the clause holding it."""
    from domain_lm.data import embedded
    from domain_lm.inference.schema_bounds import bound_schema
    from domain_lm.tasks.grounding import specialise

    t = registry.get("extraction")
    ex = next(x for x in embedded.task_examples("kpi_edgar/extraction")
              if x.output["evidence"] and x.output["evidence"].endswith("million"))
    record = R.TaskRecord("extraction", "en", dict(ex.inputs), ex.output, ex.doc)
    target = json.loads(S.render_example(t, record)["messages"][-1]["content"])
    offered = specialise(bound_schema(t.output.schema_), t.validate_inputs(ex.inputs), "en").schema_["properties"]["evidence"]
    assert ex.output["evidence"] not in offered["anyOf"][0]["enum"] and target["evidence"] in offered["anyOf"][0]["enum"]
    assert ex.output["evidence"] in target["evidence"] and list(target) == ["evidence", "value", "unit", "period"]
    assert {k: target[k] for k in ("value", "unit", "period")} == {k: ex.output[k] for k in ("value", "unit", "period")}


def test_rows_whose_answer_breaks_the_contract_are_skipped_and_counted(tmp_path, registry, tokenizer):
    """An extraction row whose evidence is over the schema's maxLength is skipped with a warning (the
    others train); a file where no row fits is a clear DataError."""
    text = "Revenue rose to $12.4 million in 2022. " + "The board met. " * 40
    good = {"text": text, "field": "revenue", "answer": {"evidence": "Revenue rose to $12.4 million in 2022",
                                                         "value": 12.4, "unit": "USD million", "period": "2022"}}
    bad = {**good, "text": text + "x", "answer": {**good["answer"], "evidence": text.strip()}}  # > 500 characters
    assert len(bad["answer"]["evidence"]) > 500

    def cfg(rows, name):
        path = _write_jsonl(tmp_path / f"{name}.jsonl", rows)
        ds = {"task": "extraction", "path": str(path), "fields": {"text": "text", "field": "field"}, "label_field": "answer"}
        return build_config({"tasks": {"templates_dir": TEMPLATES, "eval_fraction": 0.0, "datasets": [ds]},
                             "sft": {"examples_per_task": None, "few_shot_fraction": 0.0, "train": {"max_seq_len": 4096}}})

    stats = S.build_sft_data(cfg([good, bad], "mixed"), tokenizer, tmp_path / "mixed", registry=registry)
    assert stats.train_examples == {"extraction": 1} and stats.records == {"extraction": 1}
    with pytest.raises(DataError, match="fits the output contract"):
        S.build_sft_data(cfg([bad], "bad"), tokenizer, tmp_path / "bad", registry=registry)


def test_teaching_examples_leave_out_a_record_whose_answer_breaks_the_contract(registry, tokenizer):
    """The teach-while-serving path renders records itself (``task_adapter.sft_examples``): a record whose
    evidence is over maxLength is left out instead of failing the whole job."""
    from domain_lm.train.task_adapter import sft_examples

    t = registry.get("extraction")
    text = "Revenue rose to $12.4 million in 2022. " + "The board met. " * 40
    good = R.TaskRecord("extraction", "en", {"text": text, "field": "revenue"},
                        {"evidence": "Revenue rose to $12.4 million in 2022", "value": 12.4, "unit": "USD million", "period": "2022"})
    bad = R.TaskRecord("extraction", "en", {"text": text + "x", "field": "revenue"}, {**good.output, "evidence": text.strip()})
    exs = sft_examples(t, [good, bad], tokenizer, 4096, seed=0)
    assert len(exs) == 1 and "12.4" in exs[0]["messages"][-1]["content"]
    with pytest.raises(DataError, match="fits the output contract"):
        sft_examples(t, [bad], tokenizer, 4096, seed=0)
