"""The embedded datasets: every shipped file loads, fits its task template, is split by document,
carries its licence and attribution, and is rebuilt byte for byte from ../shared/data."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from domain_lm.data import embedded as E
from domain_lm.data import embedded_sources as S
from domain_lm.data.preference import hh_pair
from domain_lm.errors import DataError
from domain_lm.tasks import TemplateRegistry

REPO = Path(__file__).resolve().parents[1]
ROOT = E.embedded_dir()
NOT_REDISTRIBUTABLE = ["fpb", "finer_ord", "fomc", "ectsum", "fiqa", "fincausal", "bbt", "cluener"]


@pytest.fixture(scope="module")
def reg():
    return TemplateRegistry.load(REPO / "task_templates")


def all_records():
    return {n: E.records(n) for n in E.available()}


# --------------------------------------------------------------------------- files and manifest


def test_manifest_matches_the_files():
    shipped = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.jsonl.gz"))
    assert shipped == sorted(i.file for i in E.manifest().values())
    for name, meta in E.manifest().items():
        raw = gzip.decompress((ROOT / meta.file).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == meta.content_sha256, name
        rows = E.records(name)
        assert len(rows) == meta.records > 0
        assert len({r["doc"] for r in rows}) == meta.docs


def test_the_package_stays_small():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024


def test_every_task_the_demo_needs_has_data():
    for task in ("sentiment", "customer_intent", "entities", "extraction"):
        assert E.available("task", task), task
    assert E.available("preference")
    assert all(E.corpus_paths()[part] for part in E.CORPUS_PARTS)


def test_unknown_names_and_kinds_are_clear_errors():
    with pytest.raises(DataError, match="banking77/intents"):
        E.records("fpb/train")
    with pytest.raises(DataError, match="not a task dataset"):
        E.task_examples("hh_rlhf/preference")
    with pytest.raises(DataError, match="corpus part"):
        E.corpus_documents("finance")  # type: ignore[arg-type]


def test_records_are_copies():
    first = E.records("banking77/intents")
    first[0]["text"] = "changed"
    assert E.records("banking77/intents")[0]["text"] != "changed"


# --------------------------------------------------------------------------- task data against templates


@pytest.mark.parametrize("name", E.available("task"))
def test_every_gold_output_satisfies_its_template(reg, name):
    examples = E.task_examples(name)
    template = reg.get(E.info(name).task)
    for x in examples:
        assert template.validate_inputs(x.inputs)["text"] == x.inputs["text"]
        target = template.target_text(x.output, x.lang)
        assert template.parse_output(target, x.lang) == x.output


def test_label_tasks_use_template_labels_and_are_usable(reg):
    tweets = [x.output for x in E.task_examples("twitter_fin_sentiment/sentiment")]
    counts = Counter(tweets)
    assert set(counts) == {"positive", "negative", "neutral"}
    assert len(set(counts.values())) == 1, counts  # class-balanced
    intents = Counter(x.output for x in E.task_examples("banking77/intents"))
    assert set(intents) == set(reg.get("customer_intent").output.labels)
    for name in ("twitter_fin_sentiment/sentiment", "banking77/intents"):
        train, held = E.split_by_doc(E.task_examples(name))
        assert len(held) >= 200 and len(train) >= 1000, name


def test_entity_offsets_match_their_text():
    rows = E.records("fin_ner/entities")
    assert sum(bool(r["entities"]) for r in rows) > 300
    for r in rows:
        assert len(r["text"]) <= 600
        ends = [0]
        for e in r["entities"]:
            assert r["text"][e["start"] : e["end"]] == e["text"] and e["text"].strip() == e["text"]
            assert e["type"] in ("ORG", "PER", "LOC")
            assert e["start"] >= ends[-1], "entities are in order and do not overlap"
            ends.append(e["end"])


def _numbers(text: str) -> list[float]:
    found = (S.parse_amount(m) for m in re.findall(r"\(?-?\d[\d,]*(?:\.\d+)?\)?", text))
    return [float(v) for v in found if v is not None]


@pytest.mark.parametrize("name", E.available("task", "extraction"))
def test_extraction_evidence_is_verbatim_and_holds_the_value(name):
    rows = E.records(name)
    answered = [r for r in rows if r["answer"]["value"] is not None]
    assert answered and len(answered) < len(rows) or name == "tatqa/extraction"
    for r in rows:
        a = r["answer"]
        if a["value"] is None:
            assert a == S.NULL_ANSWER and r["evidence_start"] is None
            continue
        ev, start = a["evidence"], r["evidence_start"]
        assert r["text"][start : start + len(ev)] == ev
        assert abs(a["value"]) in [abs(v) for v in _numbers(ev)], (a["value"], ev)
        if r["period"] is not None:
            assert a["period"] == r["period"] and r["period"] in r["text"]


# --------------------------------------------------------------------------- splits by document


@pytest.mark.parametrize("seed", [0, 42])
def test_no_document_straddles_the_split(seed):
    for name, rows in all_records().items():
        train, held = E.split_by_doc(rows, seed=seed)
        assert len(train) + len(held) == len(rows)
        assert not {r["doc"] for r in train} & {r["doc"] for r in held}, name


def test_the_split_ignores_order_and_other_documents():
    rows = E.records("banking77/intents")
    _, held = E.split_by_doc(rows)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    _, held_shuffled = E.split_by_doc(shuffled[: len(rows) // 2])
    assert {r["doc"] for r in held_shuffled} <= {r["doc"] for r in held}
    assert 0.17 < len(held) / len(rows) < 0.23


def test_corpus_train_side_holds_no_heldout_task_document():
    held_task_docs = {x.doc for n in E.available("task") for x in E.split_by_doc(E.task_examples(n))[1]}
    train_docs = {d["doc"] for d in E.corpus_documents("domain", "train")}
    assert held_task_docs and not held_task_docs & train_docs
    heldout_docs = {d["doc"] for d in E.corpus_documents("domain", "heldout")}
    assert heldout_docs and heldout_docs.isdisjoint(train_docs)


@pytest.mark.parametrize("name", ["fin_ner/entities", "kpi_edgar/extraction", "tatqa/extraction"])
def test_task_texts_come_from_the_corpus_document_with_the_same_id(name):
    # Same ids in both places is what keeps a held-out task document out of pretraining.
    corpus: dict[str, list[str]] = {}
    for d in E.corpus_documents("domain"):
        corpus.setdefault(d["doc"], []).append(d["text"])
    for r in E.records(name):
        assert any(r["text"] in text for text in corpus[r["doc"]]), (r["doc"], r["text"][:80])


def test_general_slices_are_disjoint_from_each_other_and_from_the_preference_pairs():
    prefs = E.records("hh_rlhf/preference")
    assert all(hh_pair(r) is not None for r in prefs)
    replay, held = E.corpus_documents("general_replay"), E.corpus_documents("general_heldout")
    opening = [{S.first_human_turn(r["text"]) for r in rows} for rows in (replay, held)]
    opening.append({S.first_human_turn(r["chosen"]) for r in prefs})
    docs = [{r["doc"] for r in rows} for rows in (replay, held, prefs)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not opening[i] & opening[j] and not docs[i] & docs[j]


def test_written_corpus_is_read_by_the_corpus_stage(tmp_path):
    from domain_lm.config import CorpusSource
    from domain_lm.data.extract import iter_documents

    path = E.write_corpus("domain", tmp_path / "domain.jsonl", split="train")
    docs = list(iter_documents([CorpusSource(path=str(path))]))
    assert [d.text for d in docs] == [d["text"] for d in E.corpus_documents("domain", "train")]


# --------------------------------------------------------------------------- licence and attribution


def test_every_folder_has_a_licence_and_a_readme_line():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
    assert folders == sorted({i.source for i in E.manifest().values()})
    for f in folders:
        licence = (ROOT / f / "LICENSE").read_text(encoding="utf-8")
        assert re.search(r"MIT License|Creative Commons|CC BY|Attribution", licence), f
        line = next(ln for ln in readme.splitlines() if ln.startswith(f"| `{f}/` |"))
        assert re.search(r"@[0-9a-f]{7}", line) and re.search(r"MIT|CC BY", line), line
    for name in NOT_REDISTRIBUTABLE:
        assert not any(name in p.name for p in ROOT.rglob("*")), name
    assert "synthetic" in readme


# --------------------------------------------------------------------------- builder


def test_detokenize_offsets_point_at_each_token():
    tokens = ["Borrower", "'", "s", "fee", "(", "$", "1,000", ")", "was", "paid", "."]
    text, spans = S.detokenize(tokens)
    assert text == "Borrower's fee ($1,000) was paid."
    assert [text[a:b] for a, b in spans] == tokens


def test_parse_amount():
    assert S.parse_amount("$1,496.5") == 1496.5
    assert S.parse_amount("(1,234)") == -1234 and isinstance(S.parse_amount("12"), int)
    assert S.parse_amount("13.0%") == 13.0
    assert S.parse_amount("2019 and 2018") is None


def test_table_figures_carry_their_column_label():
    table = [
        ["", "", "Years Ended September 30,", ""],  # a title over every column tells no column apart
        ["", "Domestic", "", "International"],  # group headers span rightwards
        ["", "2019", "2018", "2019"],
        ["", "", "(in millions)", ""],
        ["Revenue:", "", "", ""],  # no figure yet: still a header row (it labels no column)
        ["Service", "$ 12,899", "12,621", ""],
        ["Total", "(1,234)", "", "7.5%"],
    ]
    assert S.column_labels(table) == (5, ["", "Domestic 2019", "Domestic 2018", "International 2019"])
    assert S.linearize_table(table).split("\n") == [
        "Years Ended September 30,",
        "Domestic | International",
        "2019 | 2018 | 2019",
        "(in millions)",
        "Revenue:",
        "Service | Domestic 2019: $ 12,899 | Domestic 2018: 12,621",
        "Total | Domestic 2019: (1,234) | International 2019: 7.5%",
    ]
    assert [S.table_cell_value(c) for c in "Service | Domestic 2018: 12,621".split(" | ")] == ["Service", "12,621"]
    # Dates, quarters, scales and footnote marks in headers are labels, not figures; the lowest header
    # row that tells the columns apart names them, without the title rows above it.
    headers = ["July 27, 2019 (1)", "30 June 2018", "Q4 2017", "1/1/19", "$'000"]
    table = [["", "Years Ended", "", "", ""], ["", *headers], ["Cash", "5", "6", "7", "8", "9"]]
    assert S.column_labels(table) == (2, ["", *headers])
    # A table without header rows is written as it is.
    assert S.linearize_table([["Cash", "5", "6"], ["", "", ""]]) == "Cash | 5 | 6"


def test_kpi_sheet_parsing_and_extraction():
    def block(blob, tokens, labels):
        n = len(tokens)
        return [["Blob ID", blob], ["Sentence ID", 0], ["Sentence", *tokens], ["Secondary Annotation", *[None] * n],
                ["Manual Annotations", *labels], ["Comment"], [None]]  # fmt: skip

    rows = [["ACME_10-K_1.txt", "train", "current year", 2020]]
    rows += block(1, ["Revenue", "was", "$", "5.1", "billion", "in", "2020", "and", "$", "4.0", "billion", "in", "2019", "."],
                  ["kpi_1", None, None, "cy_1", None, None, None, None, None, "py_1", None, None, None, None])  # fmt: skip
    rows += block(
        2, ["Net", "income", "was", "$", "7", "million", "in", "2020", "."], ["kpi_1", "kpi_1", None, None, "cy_1", None, None, None, None]
    )
    docs = S.kpi_documents({"legend": [[None]], "0": rows})
    assert [d.ticker for d in docs] == ["ACME"] and len(docs[0].sentences) == 2
    got = S.kpi_extraction(docs, max_chars=600, max_evidence=300, null_share=1.0, seed=0)
    answers = [(r["field"], r["period"], r["answer"]["value"], r["answer"]["unit"], r["answer"]["evidence"]) for r in got]
    assert answers == [
        ("Revenue", "2020", 5.1, "USD billion", "Revenue was $5.1 billion"),
        ("Revenue", "2019", 4.0, "USD billion", "Revenue was $5.1 billion in 2020 and $4.0 billion"),
        ("Net income", "2020", 7, "USD million", "Net income was $7 million"),
        ("Net income", "2019", None, None, None),  # the sentence names 2020 only
    ]
    assert {r["doc"] for r in got} == {"kpi_edgar:ACME"}
    assert (
        S.kpi_corpus(docs)[0]["text"] == "Revenue was $5.1 billion in 2020 and $4.0 billion in 2019.\n\nNet income was $7 million in 2020."
    )


def test_gzip_output_is_deterministic():
    from domain_lm.data.embedded_build import gzip_bytes

    a, b = gzip_bytes(b"same bytes\n"), gzip_bytes(b"same bytes\n")
    assert a == b and a[4:8] == b"\0\0\0\0"  # no timestamp in the header
    assert gzip.decompress(a) == b"same bytes\n"


def test_builder_reproduces_the_shipped_files(shared_data, tmp_path):
    pytest.importorskip("openpyxl")
    from domain_lm.data.embedded_build import build

    out = tmp_path / "datasets"
    build(shared_data, out)
    built = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert built == sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file())
    for rel in built:
        new, old = (out / rel).read_bytes(), (ROOT / rel).read_bytes()
        if rel.endswith(".gz"):
            # The content must be identical; the compressed bytes also are with the same zlib build.
            assert gzip.decompress(new) == gzip.decompress(old), rel
        else:
            assert new == old, rel
    assert json.loads((out / E.MANIFEST).read_text()) == json.loads((ROOT / E.MANIFEST).read_text())


def test_builder_never_replaces_a_foreign_directory(shared_data, tmp_path):
    from domain_lm.data.embedded_build import build

    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match="refusing"):
        build(shared_data, tmp_path)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"
