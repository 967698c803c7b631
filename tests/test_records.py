"""``data.records``: one record type and one load -> dedupe -> split, by document when a dataset names its
group column; the SFT build, the preference pairs and the eval stage all see the same split."""

from __future__ import annotations

import json

import pytest

from domain_lm.config import build_config
from domain_lm.data import records as R
from domain_lm.errors import DataError

from .conftest import REPO

TEMPLATES = str(REPO / "task_templates")


@pytest.fixture(scope="module")
def registry():
    from domain_lm.tasks import TemplateRegistry

    return TemplateRegistry.load(TEMPLATES)


def _rows(n_docs: int, per_doc: int = 5, start: int = 0) -> list[dict]:
    """Synthetic news sentences: ``per_doc`` sentences per document, labels cycling."""
    labels = ["positive", "negative", "neutral"]
    return [
        {"doc_idx": d, "sentence": f"Bank {d} report, sentence {s}: results were {labels[(d + s) % 3]}.", "y": labels[(d + s) % 3]}
        for d in range(start, start + n_docs)
        for s in range(per_doc)
    ]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(path, group_field: str | None = "doc_idx", eval_fraction: float = 0.3, **extra):
    ds = {"task": "sentiment", "path": str(path), "fields": {"text": "sentence"}, "label_field": "y", "group_field": group_field}
    return build_config({"tasks": {"templates_dir": TEMPLATES, "eval_fraction": eval_fraction, "datasets": [ds], **extra}})


def test_documents_never_straddle_the_split(tmp_path, registry):
    split = R.load_split(_cfg(_write(tmp_path / "d.jsonl", _rows(60)), "doc_idx"), registry)
    train_docs = {r.group for r in split.train}
    held_docs = {r.group for r in split.held}
    assert train_docs and held_docs and not train_docs & held_docs
    assert len(split.train) + len(split.held) == 300 and all(r.group.startswith("doc_idx=") for r in split.train)
    # Without the group column the same rows split sentence by sentence: documents straddle.
    plain = R.load_split(_cfg(tmp_path / "d.jsonl", None), registry)
    assert {r.inputs["text"] for r in plain.train} != {r.inputs["text"] for r in split.train}
    assert {r.group for r in plain.train} == {None}


def test_adding_documents_never_moves_an_old_record(tmp_path, registry):
    before = R.load_split(_cfg(_write(tmp_path / "a.jsonl", _rows(40)), "doc_idx"), registry)
    after = R.load_split(_cfg(_write(tmp_path / "b.jsonl", _rows(40) + _rows(30, start=40)), "doc_idx"), registry)
    assert {r.key() for r in before.held} <= {r.key() for r in after.held}
    assert {r.key() for r in before.train} <= {r.key() for r in after.train}
    reseeded = R.load_split(_cfg(tmp_path / "a.jsonl", "doc_idx", seed=43), registry)
    assert {r.group for r in reseeded.held} != {r.group for r in before.held}


def test_missing_group_column_is_named(tmp_path, registry):
    with pytest.raises(DataError, match="doc_id.*group_field"):
        R.load_split(_cfg(_write(tmp_path / "d.jsonl", _rows(3)), "doc_id"), registry)


def test_records_round_trip_and_split_views(tmp_path, registry):
    rec = R.TaskRecord("sentiment", "en", {"text": "x"}, "neutral", group="doc_idx=3")
    assert R.TaskRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert "group" not in R.TaskRecord("sentiment", "en", {"text": "x"}, "neutral").to_json()  # files as before
    cfg = build_config({"tasks": {"templates_dir": TEMPLATES, "demo_tasks": ["sentiment", "entities"], "demo_langs": ["en"]}})
    split = R.load_split(cfg, registry)
    assert list(split.templates) == ["sentiment", "entities"] and split.template(split.train[0]).name == split.train[0].task
    by_train, by_held = split.train_by_task(), split.held_by_task()
    assert set(by_train) == set(by_held) == {"sentiment", "entities"}
    assert sum(map(len, by_train.values())) == len(split.train) and sum(map(len, by_held.values())) == len(split.held)


def test_every_stage_sees_the_same_split(tmp_path, registry, tiny_model_dir, monkeypatch):
    """SFT's eval_records, the eval stage's held-out split and the preference pairs agree with load_split."""
    from domain_lm.data.preference import build_preference_data
    from domain_lm.data.sft_data import build_sft_data
    from domain_lm.models.loading import load_tokenizer

    rows = _rows(40) + _rows(5)  # duplicates are dropped once, everywhere
    cfg = _cfg(_write(tmp_path / "d.jsonl", rows), "doc_idx")
    cfg.sft.train.max_seq_len = 4096
    split = R.load_split(cfg, registry)
    assert split.duplicates == 25

    build_sft_data(cfg, load_tokenizer(tiny_model_dir), tmp_path / "sft", registry=registry)
    assert R.read_records(tmp_path / "sft" / "eval_records.jsonl") == split.held

    from domain_lm import inference
    from domain_lm.inference.fake import FakeEngine
    from domain_lm.stages import eval as eval_stage

    engines: list[FakeEngine] = []
    monkeypatch.setattr(inference, "create_engine",
                        lambda path, **kw: engines.append(FakeEngine(adapters=kw.get("adapters"))) or engines[-1])
    cfg.eval.max_examples, cfg.eval.baseline = None, False
    eval_stage.build_report(cfg, registry, {"base": "unused"})  # records the eval stage scores
    asked = [m["content"] for req in engines[0].requests for m in req.messages if m["role"] == "user"]
    assert len(asked) == len(split.held) and all(any(r.inputs["text"] in q for q in asked) for r in split.held)

    cfg.reward.from_tasks, cfg.reward.eval_fraction = True, 0.0
    pairs, _, counts = build_preference_data(cfg, registry=registry)
    held_texts = {r.inputs["text"] for r in split.held}
    assert counts["wrong_label"] == len(split.train)  # one per train record, none from held-out ones
    assert all(not any(t in p.prompt[-1]["content"] for t in held_texts) for p in pairs)


def test_demo_default_is_the_embedded_real_data_split_by_document(registry):
    """No datasets configured: the demo tasks are the embedded real datasets, each record grouped by
    its document, held out exactly when ``embedded.doc_is_heldout`` holds its document out (the rule
    the corpus stage splits the embedded corpus by)."""
    from domain_lm.data import embedded

    cfg = build_config({"tasks": {"templates_dir": TEMPLATES}})
    split = R.load_split(cfg, registry)
    assert list(split.templates) == ["sentiment", "customer_intent", "entities", "extraction"]  # no synthetic-only task
    every = split.train + split.held
    assert all(r.group and r.dataset in cfg.tasks.demo_datasets and r.lang == "en" for r in every)
    assert all(embedded.doc_is_heldout(r.group, cfg.tasks.eval_fraction, cfg.tasks.seed) for r in split.held)
    assert not any(embedded.doc_is_heldout(r.group, cfg.tasks.eval_fraction, cfg.tasks.seed) for r in split.train)
    held = split.held_by_task()
    assert all(len(held[t]) >= 200 for t in held), {t: len(v) for t, v in held.items()}  # enough to score
    assert {r.dataset for r in held["extraction"]} == {"kpi_edgar/extraction", "nlupp_banking/extraction"}  # TAT-QA: opt-in


def test_held_out_task_documents_are_held_out_of_the_corpus(registry):
    """With the corpus fraction at least the task one and the same seed (the config enforces it where the
    corpus is split by document), no held-out task document is in the corpus's training side."""
    from domain_lm.data import embedded

    cfg = build_config({"tasks": {"templates_dir": TEMPLATES}})
    held_docs = {r.group for r in R.load_split(cfg, registry).held}
    for fraction in (cfg.tasks.eval_fraction, cfg.tasks.eval_fraction + 0.1):
        corpus_train = {d["doc"] for d in embedded.corpus_documents("domain", "train", fraction, cfg.tasks.seed)}
        corpus_held = {d["doc"] for d in embedded.corpus_documents("domain", "heldout", fraction, cfg.tasks.seed)}
        assert not held_docs & corpus_train
        assert held_docs & corpus_held  # the documents are shared: FIN NER agreements, KPI-EDGAR companies


def test_synthetic_examples_only_where_no_real_data(registry):
    cfg = build_config(
        {"tasks": {"templates_dir": TEMPLATES, "demo_tasks": ["sentiment", "report_summary"], "demo_langs": ["en", "zh"]}}
    )
    split = R.load_split(cfg, registry)
    by = {(r.task, r.lang): r.dataset for r in split.train}
    assert by[("sentiment", "en")] == "twitter_fin_sentiment/sentiment"
    assert by[("sentiment", "zh")] == by[("report_summary", "en")] == by[("report_summary", "zh")] == R.SYNTHETIC
    with pytest.raises(Exception, match="unknown embedded task datasets"):
        build_config({"tasks": {"demo_datasets": ["nope/nothing"]}})


def test_only_the_chosen_embedded_datasets_are_read(registry):
    cfg = build_config({"tasks": {"templates_dir": TEMPLATES, "demo_datasets": ["tatqa/extraction"]}})
    split = R.load_split(cfg, registry)
    assert list(split.templates) == ["extraction"] and {r.dataset for r in split.train + split.held} == {"tatqa/extraction"}
    assert set(R.data_hashes(cfg)) == {"embedded:tatqa/extraction"}
