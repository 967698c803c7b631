"""Corpus build on mixed-format fixtures made here: txt, md, jsonl, csv, a hand-written PDF, a docx, Chinese."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from domain_lm.config import CorpusSection, CorpusSource
from domain_lm.errors import DataError

BODY_A = (
    "Northbridge Bank reported net interest income of 4.2 billion dollars for the year, an increase of seven percent, "
    "as loan growth in commercial lending and higher deposit margins offset a rise in funding costs. The board proposed "
    "a final dividend of 55 cents per share and announced a share buyback programme of up to one billion dollars. "
    "Credit quality remained sound: net charge-offs were 0.31 percent of average loans and the allowance for credit "
    "losses covered non-performing loans almost twice. Management expects mid single digit loan growth next year, "
    "supported by mortgage lending and treasury services for corporate clients. Questions: contact jane.doe@northbridge.example.com."
)
BODY_B = (
    "Harbor Trust Quarterly Review. Deposits rose to 88 billion dollars while the loan to deposit ratio eased to 79 percent. "
    "The card business processed a record volume; one disputed transaction on card 4111 1111 1111 1111 was refunded after review. "
    "Operating expenses were flat and the efficiency ratio improved by two points to 56 percent.\n\n"
    "Forward-looking statements. This document contains forward-looking statements that involve risks and uncertainties."
)
ZH = (
    "华信银行发布二〇二三年度业绩公告。本年度营业收入同比增长百分之六，净利润增长百分之五；不良贷款率下降至百分之一点二。"
    "零售业务保持稳健，信用卡交易额创历史新高！如需了解详情，请致电投资者关系部 13812345678；客户身份证号 110105194912310021 不得外传。"
    "展望未来，本行将继续支持实体经济，加强风险管理？答案是肯定的。"
)


def _pdf_bytes(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF (Helvetica, one text line per Tj) with a correct xref table."""
    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]  # pages object filled below
    kids = []
    for lines in pages:
        ops = ["BT /F1 10 Tf 14 TL 40 800 Td"] + [f"({ln}) Tj T*" for ln in lines] + ["ET"]
        stream = "\n".join(ops).encode("latin-1")
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_id = len(objs)
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R /Resources << /Font << /F1 %d 0 R >> >> >>"
            % (content_id, 0)
        )
        kids.append(len(objs))
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    font_id = len(objs)
    objs = [o.replace(b"/F1 0 0 R", b"/F1 %d 0 R" % font_id) for o in objs]
    objs[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory) -> Path:
    import docx

    d = tmp_path_factory.mktemp("mixed")
    (d / "a.txt").write_text(BODY_A, encoding="utf-8")
    (d / "b.md").write_text("# Harbor Trust\n\n" + BODY_B, encoding="utf-8")
    (d / "a_copy.txt").write_text(BODY_A.replace(". ", ".\n"), encoding="utf-8")  # exact after whitespace folding
    (d / "a_near.txt").write_text(BODY_A.replace("seven percent", "eight percent"), encoding="utf-8")  # near duplicate
    pd.DataFrame(
        {
            "body": [
                "Meeting note: the asset and liability committee reviewed the interest rate gap and agreed to lengthen "
                "the duration of the securities portfolio by half a year while keeping liquidity buffers above target.",
                "Too short.",
                "Risk note: concentration in commercial real estate loans rose to 18 percent of the book; the credit "
                "committee tightened underwriting standards for office properties in secondary markets this quarter.",
            ],
            "id": [1, 2, 3],
        }
    ).to_json(d / "notes.jsonl", orient="records", lines=True, force_ascii=False)
    pd.DataFrame(
        {
            "text": [
                "Complaint log: customer with account number 12345678901 reported a delayed wire transfer; operations "
                "traced the payment to a sanctions screening hold and released it after manual review on the same day.",
                "Branch report: mortgage applications increased sharply in the spring, and the branch added two loan "
                "officers to keep approval times under ten working days for first-time buyers in the region.",
            ]
        }
    ).to_csv(d / "logs.csv", index=False)
    header = "Eastlake Financial Annual Report 2023"
    pages = [
        [header, "The bank grew its wealth management assets by twelve percent during the year.", "1"],
        [header, "Fee income from treasury services offset lower trading revenue in the second half.", "2"],
        [header, "The capital position remains strong with a tier one ratio of thirteen percent.", "Page 3 of 3"],
    ]
    (d / "report.pdf").write_bytes(_pdf_bytes(pages))
    doc = docx.Document()
    doc.add_paragraph("Internal memo to branch managers about the new customer verification procedure.")
    doc.add_paragraph("Customers must bring two documents; questions go to the hotline at +1 (415) 555-0142 during office hours.")
    doc.save(d / "memo.docx")
    (d / "zh.txt").write_text(ZH, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def section(mixed_sources) -> CorpusSection:
    return CorpusSection(
        sources=[CorpusSource(path=str(mixed_sources), text_column="body")],
        min_chars=120,
        block_size=64,
        chunk_tokens=32,
        heldout_fraction=0.2,
        shard_docs=4,
    )


def _fix_csv_column(section: CorpusSection, d: Path) -> CorpusSection:
    # The jsonl uses "body", the csv "text": two sources over the same directory, split by format.
    return section.model_copy(
        update={
            "sources": [
                CorpusSource(path=str(d), format="jsonl", text_column="body"),
                CorpusSource(path=str(d), format="csv", text_column="text"),
                *[
                    CorpusSource(path=str(d / f))
                    for f in ("a.txt", "b.md", "a_copy.txt", "a_near.txt", "report.pdf", "memo.docx", "zh.txt")
                ],
            ]
        }
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, mixed_sources, section, tiny_model_dir):
    from domain_lm.data.corpus import build_corpus_cached
    from domain_lm.models.loading import load_tokenizer

    sec = _fix_csv_column(section, mixed_sources)
    out = tmp_path_factory.mktemp("corpus-out")
    cache = tmp_path_factory.mktemp("corpus-cache")
    report, cached = build_corpus_cached(sec, load_tokenizer(tiny_model_dir), out, cache_dir=cache)
    return sec, out, report, cached, cache


def test_counts_dedupe_pii_and_languages(built):
    _, out, report, cached, _ = built
    r = report["domain"]
    assert not cached
    # 4 text files + 3 jsonl rows + 2 csv rows + pdf + docx + zh
    assert r["docs_in"] == 12
    assert r["too_short"] == 1
    assert r["duplicates_exact"] == 1
    assert r["duplicates_near"] == 1
    assert r["docs_out"] == 9
    assert r["docs_by_lang"] == {"en": 8, "zh": 1}
    assert r["pii_hits"] == {"ACCOUNT_NUMBER": 1, "CARD_NUMBER": 1, "EMAIL": 1, "ID_NUMBER": 1, "PHONE": 2}
    assert r["tokens_by_lang"]["zh"] > 0 and r["tokens_by_lang"]["en"] > r["tokens_by_lang"]["zh"]
    assert (out / "length_hist.png").stat().st_size > 1000
    assert "duplicates_near" in (out / "report.md").read_text()


def _docs(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "docs").glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_cleaning_pdf_docx_and_scrubbing(built):
    _, out, _, _, _ = built
    docs = _docs(out)
    by_src = {Path(d["source"].split("#")[0]).name: d["text"] for d in docs}
    pdf = by_src["report.pdf"]
    assert "wealth management assets" in pdf and "tier one ratio" in pdf
    assert "Annual Report 2023" not in pdf  # running header (3 pages) dropped
    assert "Page 3" not in pdf and "\n1\n" not in pdf
    assert "hotline at <PHONE>" in by_src["memo.docx"]
    assert "forward-looking" not in by_src["b.md"].lower() and "<CARD_NUMBER>" in by_src["b.md"]
    assert "<ID_NUMBER>" in by_src["zh.txt"] and "13812345678" not in by_src["zh.txt"]
    assert all("@" not in d["text"] for d in docs)


def test_heldout_split_is_by_document_and_blocks_account_for_tokens(built, tiny_model_dir):
    from domain_lm.data.corpus import read_blocks

    _, out, report, _, _ = built
    docs = _docs(out)
    assert len((list((out / "docs").glob("*.jsonl")))) == math.ceil(9 / 4)  # shards of 4 docs
    held = [d for d in docs if d["split"] == "heldout"]
    assert len(held) == 2 and report["domain"]["heldout_docs"] == 2
    for split in ("train", "heldout"):
        blocks = read_blocks(out, "domain", split)
        assert blocks and all(len(b) <= 64 for b in blocks)
        doc_tokens = sum(d["tokens"] + 1 for d in docs if d["split"] == split)  # + EOS per document
        packed = sum(len(b) for b in blocks)
        assert doc_tokens - 16 < packed <= doc_tokens  # only a final remainder under 16 tokens may drop
    # Held-out blocks decode to held-out documents' text only.
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    held_text = tok.decode(read_blocks(out, "domain", "heldout")[0][:20], skip_special_tokens=True)
    assert any(held_text.strip()[:15] in d["text"] for d in held)
    assert not any(held_text.strip()[:15] in d["text"] for d in docs if d["split"] == "train")
    # Chunks are token-bounded: more chunks than documents with chunk_tokens=32.
    assert report["domain"]["chunks"] > report["domain"]["docs_out"]


def test_split_is_deterministic_by_seed():
    from domain_lm.data.corpus import heldout_ids

    ids = [f"doc{i}" for i in range(50)]
    a = heldout_ids(ids, 0.2, seed=1)
    assert a == heldout_ids(list(reversed(ids)), 0.2, seed=1) and len(a) == 10
    assert a != heldout_ids(ids, 0.2, seed=2)
    assert heldout_ids(["x", "y"], 0.01, seed=0) and not heldout_ids(["x"], 0.5, seed=0)


def test_cache_hit_and_invalidation(built, tmp_path, tiny_model_dir, mixed_sources):
    from domain_lm.data.corpus import build_corpus_cached
    from domain_lm.models.loading import load_tokenizer

    sec, _, report, _, cache = built
    tok = load_tokenizer(tiny_model_dir)
    again, cached = build_corpus_cached(sec, tok, tmp_path / "again", cache_dir=cache)
    assert cached and again == report and (tmp_path / "again" / "blocks").is_dir()
    changed = sec.model_copy(update={"near_dup_threshold": 0.99})
    _, cached = build_corpus_cached(changed, tok, tmp_path / "changed", cache_dir=cache)
    assert not cached
    # Editing an input file invalidates the entry too.
    extra = tmp_path / "extra.txt"
    extra.write_text(BODY_A.replace("Northbridge", "Southbridge"))
    grown = sec.model_copy(update={"sources": [*sec.sources, CorpusSource(path=str(extra))]})
    _, cached = build_corpus_cached(grown, tok, tmp_path / "g1", cache_dir=cache)
    assert not cached
    extra.write_text(BODY_A.replace("Northbridge", "Westbridge"))
    _, cached = build_corpus_cached(grown, tok, tmp_path / "g2", cache_dir=cache)
    assert not cached
    _, cached = build_corpus_cached(grown, tok, tmp_path / "g3", cache_dir=cache)
    assert cached


def test_chinese_splitter_respects_sentence_punctuation(tiny_model_dir):
    from domain_lm.data.corpus import make_splitter
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    chunks = make_splitter(tok, 64).split_text(ZH)
    assert len(chunks) > 1
    assert all(c.endswith(("。", "！", "？", "；")) for c in chunks[:-1])
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 64 for c in chunks)


def test_missing_path_raises_and_writes_nothing(tmp_path, tiny_model_dir):
    from domain_lm.data.corpus import build_corpus
    from domain_lm.models.loading import load_tokenizer

    good = tmp_path / "ok.txt"
    good.write_text(BODY_A)
    missing = tmp_path / "nope" / "missing.txt"
    out = tmp_path / "out"
    sec = CorpusSection(sources=[CorpusSource(path=str(good)), CorpusSource(path=str(missing))])
    with pytest.raises(DataError, match="missing.txt"):
        build_corpus(sec.sources, load_tokenizer(tiny_model_dir), sec, out)
    assert not out.exists()


def test_blank_line_split_and_max_docs(tmp_path, tiny_model_dir):
    from domain_lm.data.corpus import build_corpus
    from domain_lm.models.loading import load_tokenizer

    f = tmp_path / "many.txt"
    import random

    rng = random.Random(0)
    words = BODY_A.split()
    f.write_text("\n\n".join(f"Document {i}: " + " ".join(rng.sample(words, 60)) for i in range(5)))  # 5 distinct documents
    tok = load_tokenizer(tiny_model_dir)
    sec = CorpusSection(sources=[CorpusSource(path=str(f), split="blank_line")], max_docs=3, heldout_fraction=0.0)
    r = build_corpus(sec.sources, tok, sec, tmp_path / "out")["domain"]
    assert r["docs_in"] == 3 and r["docs_out"] == 3 and r["heldout_docs"] == 0
    # Per-source cap: 2 from the first source, all 5 from the second.
    sec = CorpusSection(
        sources=[CorpusSource(path=str(f), split="blank_line", max_docs=2), CorpusSource(path=str(f), split="blank_line")],
        heldout_fraction=0.0,
    )
    r = build_corpus(sec.sources, tok, sec, tmp_path / "out2")["domain"]
    assert r["docs_in"] == 7 and r["duplicates_exact"] == 2


def test_cli_standalone_build(tmp_path, tiny_model_dir, mixed_sources):
    from typer.testing import CliRunner

    from domain_lm.cli import app

    out = tmp_path / "cli-out"
    res = CliRunner().invoke(
        app,
        [
            "corpus",
            "build",
            "--source",
            str(mixed_sources / "a.txt"),
            "--source",
            str(mixed_sources / "zh.txt"),
            "--out",
            str(out),
            "-s",
            f"base_model.name={tiny_model_dir}",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["domain"]["docs_out"] == 2


def test_cache_key_follows_content_not_location(tmp_path, tiny_model_dir, mixed_sources, section):
    import shutil

    from domain_lm.data.corpus import build_corpus_cached
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    a, b = (shutil.copytree(mixed_sources, tmp_path / run / "sources") for run in ("run1", "run2"))
    cache = tmp_path / "cache"
    r1, c1 = build_corpus_cached(_fix_csv_column(section, a), tok, tmp_path / "o1", cache_dir=cache)
    r2, c2 = build_corpus_cached(_fix_csv_column(section, b), tok, tmp_path / "o2", cache_dir=cache)
    assert (c1, c2) == (False, True) and r1 == r2 and r1["domain"]["docs_out"] == 9


def test_cli_missing_source_exits_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "domain_lm", "corpus", "build", "--source", str(tmp_path / "missing_dir"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "missing_dir" in proc.stdout + proc.stderr
    assert not out.exists()
