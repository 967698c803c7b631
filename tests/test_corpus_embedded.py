"""The corpus stage's default text: the embedded corpus, held out by the document ids the task data
carries, so continued pretraining never sees the text of a held-out task document; and general
text that is measured but never replayed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from domain_lm.config import CorpusSection, CorpusSource, build_config
from domain_lm.errors import ConfigError

#: Embedded task datasets whose documents are also in the domain corpus.
SHARED_DOC_TASKS = ("fin_ner/entities", "kpi_edgar/extraction", "tatqa/extraction")


def _norm(text: str) -> str:
    # Without whitespace: chunking strips it at chunk edges, so "end. Next" may come back as "end.Next".
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def embedded_corpus(tmp_path_factory, tiny_model_dir) -> tuple[CorpusSection, Path, dict]:
    """The embedded default corpus as the stage builds it (defaults of the pipeline config)."""
    from domain_lm.data.corpus import build_corpus_cached
    from domain_lm.data.corpus_sources import with_default_sources
    from domain_lm.models.loading import load_tokenizer

    section = build_config({}, ["corpus.block_size=128", "corpus.chunk_tokens=256", "corpus.cache=false"]).corpus
    filled = with_default_sources(section, tmp_path_factory.mktemp("embedded-sources"))
    out = tmp_path_factory.mktemp("embedded-corpus")
    report, _ = build_corpus_cached(filled, load_tokenizer(tiny_model_dir), out)
    return filled, out, report


def _decoded(out: Path, part: str, split: str, tokenizer) -> str:
    from domain_lm.data.corpus import read_blocks

    # Blocks are consecutive pieces of one token stream: decode them joined, so no text is cut at a block edge.
    return _norm(tokenizer.decode([t for b in read_blocks(out, part, split) for t in b], skip_special_tokens=True))


def test_no_heldout_task_document_in_training_blocks(embedded_corpus, tiny_model_dir):
    from domain_lm.data.embedded import corpus_documents, doc_is_heldout, task_examples
    from domain_lm.models.loading import load_tokenizer

    section, out, _ = embedded_corpus
    tok = load_tokenizer(tiny_model_dir)
    train_text = _decoded(out, "domain", "train", tok)
    held_text = _decoded(out, "domain", "heldout", tok)
    # Standard clauses recur across loan agreements ("Each provision of this Agreement is severable
    # ..."): a held-out sentence that a training document also contains is not held-out text.
    train_docs = " ".join(_norm(d["text"]) for d in corpus_documents("domain", "train"))
    for name in SHARED_DOC_TASKS:
        examples = [x for x in task_examples(name) if len(x.inputs["text"]) >= 80]
        held = [x for x in examples if doc_is_heldout(x.doc, 0.2, 42)]
        train = [x for x in examples if not doc_is_heldout(x.doc, 0.2, 42)]
        assert held and train, name
        own = [x for x in held if _norm(x.inputs["text"]) not in train_docs]
        assert len(own) >= 0.95 * len(held), name
        leaked = [x.doc for x in own if _norm(x.inputs["text"]) in train_text]
        assert not leaked, f"{name}: text of held-out documents {sorted(set(leaked))[:5]} is in the training blocks"
        # The check can fail: the text of training-side documents is found in the training blocks,
        # and held-out documents' text in the held-out blocks.
        found = sum(_norm(x.inputs["text"]) in train_text for x in train)
        assert found >= 0.5 * len(train), f"{name}: only {found}/{len(train)} training-side texts found"
        assert sum(_norm(x.inputs["text"]) in held_text for x in held) >= 0.5 * len(held), name


def test_document_split_agrees_with_the_task_split(embedded_corpus):
    from domain_lm.data.embedded import doc_is_heldout

    _, out, report = embedded_corpus
    docs = [json.loads(line) for f in sorted((out / "docs").glob("domain-*.jsonl")) for line in f.read_text().splitlines()]
    assert len(docs) == report["domain"]["docs_out"] > 300
    assert all(d["split"] == ("heldout" if doc_is_heldout(d["doc"], 0.2, 42) else "train") for d in docs)
    sources = {d["doc"].split(":")[0] for d in docs}
    assert sources == {"fin_ner", "kpi_edgar", "tatqa"}


def test_general_text_is_measured_never_replayed(embedded_corpus, tmp_path, tiny_model_dir):
    from domain_lm.data.corpus import build_corpus, read_blocks
    from domain_lm.data.corpus_sources import text_sources
    from domain_lm.models.loading import load_tokenizer

    section, out, report = embedded_corpus
    # Default: held-out HH dialogues are measured; replay is sampled from the base model (no general train blocks).
    assert read_blocks(out, "general", "heldout") and not read_blocks(out, "general", "train")
    assert report["general_heldout"]["docs_out"] == 163 and "general" not in report
    assert "held-out HH" in text_sources(CorpusSection())["general_heldout"]
    assert "sampled from the base model" in text_sources(CorpusSection())["general_replay"]
    # A replay file that repeats a measured dialogue: the copy is dropped from replay, the rest trains.
    from domain_lm.data.embedded import corpus_documents

    measured = corpus_documents("general_heldout")[0]["text"]
    (tmp_path / "domain.txt").write_text("The borrower shall repay the term loan in quarterly instalments. " * 8)
    (tmp_path / "held.jsonl").write_text(json.dumps({"text": measured}) + "\n")
    (tmp_path / "replay.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in [measured, "A different general text. " * 12]))
    sec = CorpusSection(min_chars=50, block_size=64)
    r = build_corpus(
        [CorpusSource(path=str(tmp_path / "domain.txt"))],
        load_tokenizer(tiny_model_dir),
        sec,
        tmp_path / "c",
        [CorpusSource(path=str(tmp_path / "replay.jsonl"))],
        [CorpusSource(path=str(tmp_path / "held.jsonl"))],
    )
    assert r["general"]["duplicates_exact"] == 1 and r["general"]["docs_out"] == 1 and r["general"]["heldout_docs"] == 0
    assert r["general_heldout"]["heldout_docs"] == 1 and r["general_heldout"]["train_docs"] == 0


def test_embedded_replay_is_another_slice(tmp_path):
    from domain_lm.data.corpus_sources import text_sources, with_default_sources

    section = CorpusSection(general_replay="embedded")
    filled = with_default_sources(section, tmp_path)
    replay = [json.loads(line) for line in Path(filled.general_sources[0].path).read_text().splitlines()]
    held = [json.loads(line) for line in Path(filled.general_heldout_sources[0].path).read_text().splitlines()]
    assert replay and held and not {r["doc"] for r in replay} & {h["doc"] for h in held}
    assert "replay dialogues" in text_sources(section)["general_replay"]
    # Configured sources are never replaced.
    own = CorpusSection(sources=[CorpusSource(path="x")], general_heldout_sources=[CorpusSource(path="y")])
    assert with_default_sources(own, tmp_path) == own
    assert text_sources(own)["domain"] == "corpus.sources: x"


def test_doc_column_groups_rows_and_checks_them(tmp_path, tiny_model_dir):
    from domain_lm.data.corpus import build_corpus
    from domain_lm.data.embedded import doc_is_heldout
    from domain_lm.errors import DataError
    from domain_lm.models.loading import load_tokenizer

    rows = [
        {"id": f"d{i % 10}", "body": f"Document d{i % 10}, part {i}. " + f"Loan covenant number {i} restricts leverage. " * 6}
        for i in range(40)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = CorpusSource(path=str(path), text_column="body", doc_column="id")
    sec = CorpusSection(sources=[src], min_chars=50, block_size=64, heldout_fraction=0.3, near_dup_threshold=0.99)
    out = tmp_path / "c"
    build_corpus(sec.sources, load_tokenizer(tiny_model_dir), sec, out)
    docs = [json.loads(line) for f in (out / "docs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {d["doc"] for d in docs} == {f"d{i}" for i in range(10)}
    assert all((d["split"] == "heldout") == doc_is_heldout(d["doc"], 0.3, 42) for d in docs)
    assert {d["split"] for d in docs} == {"train", "heldout"}
    # A missing column or an empty id is a clear error naming the file.
    with pytest.raises(DataError, match="no column 'doc'"):
        build_corpus(
            [CorpusSource(path=str(path), text_column="body", doc_column="doc")], load_tokenizer(tiny_model_dir), sec, tmp_path / "x"
        )
    path.write_text(json.dumps({"id": "", "body": "x" * 80}) + "\n")
    with pytest.raises(DataError, match="doc_column value is empty"):
        build_corpus([src], load_tokenizer(tiny_model_dir), sec, tmp_path / "y")


def test_config_requires_the_corpus_to_hold_out_every_heldout_task_document():
    assert build_config({}).corpus.heldout_fraction >= build_config({}).tasks.eval_fraction
    with pytest.raises(ConfigError, match="corpus.heldout_fraction"):
        build_config({}, ["corpus.heldout_fraction=0.1"])
    with pytest.raises(ConfigError, match="tasks.seed"):
        build_config({}, ["corpus.seed=7"])
    # Own sources without document ids are split on their own: any fraction is fine.
    cfg = build_config({"corpus": {"sources": [{"path": "x"}], "heldout_fraction": 0.05}})
    assert cfg.corpus.heldout_fraction == 0.05
    with pytest.raises(ConfigError, match="corpus.heldout_fraction"):
        build_config({"corpus": {"sources": [{"path": "x", "doc_column": "doc"}], "heldout_fraction": 0.05}})
