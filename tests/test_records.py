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

    from domain_lm.eval import harness
    from domain_lm.stages import eval as eval_stage

    scored = {}
    monkeypatch.setattr(harness, "evaluate_model", lambda path, tasks, **kw: scored.update(tasks) or {})
    cfg.eval.max_examples, cfg.eval.baseline = None, False
    eval_stage.build_report(cfg, registry, {"base": "unused"})  # records the eval stage would score
    assert {t: recs for t, (_, recs) in scored.items()} == split.held_by_task()

    cfg.reward.from_tasks, cfg.reward.eval_fraction = True, 0.0
    pairs, _, counts = build_preference_data(cfg, registry=registry)
    held_texts = {r.inputs["text"] for r in split.held}
    assert counts["wrong_label"] == len(split.train)  # one per train record, none from held-out ones
    assert all(not any(t in p.prompt[-1]["content"] for t in held_texts) for p in pairs)
