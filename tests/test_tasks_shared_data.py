"""Bundled templates against the real labelled data in ../shared/data (skipped when absent).

Checks that real rows fit the templates' input limits, render, and that their gold answers
round-trip through the output contract: the precondition for SFT targets and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domain_lm.tasks import TemplateRegistry
from tests.tasks_fixtures import TEMPLATES


def _rows(path: Path, limit: int | None = None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if limit and len(out) >= limit:
                break
    return out


@pytest.fixture(scope="module")
def reg() -> TemplateRegistry:
    return TemplateRegistry.load(TEMPLATES)


def test_fpb_sentiment_rows_fit_the_sentiment_template(reg, shared_data):
    t = reg.get("sentiment")
    rows = _rows(shared_data / "fpb" / "train.jsonl", limit=500)
    assert len(rows) == 500
    for r in rows:
        msgs = t.render_messages({"text": r["text"]}, lang="en", variant=len(r["text"]) % t.num_variants("en"))
        assert r["text"] in msgs[-1]["content"]
        assert t.parse_output(t.target_text(r["label"], "en"), "en") == r["label"]
        assert t.parse_output(t.target_text(r["label"], "zh"), "zh") == r["label"]


def test_finer_ord_entities_round_trip_through_the_entities_contract(reg, shared_data):
    t = reg.get("entities")
    rows = _rows(shared_data / "finer_ord" / "val.jsonl")
    n_ents = 0
    for r in rows:
        gold = [{"text": e["text"], "type": e["type"]} for e in r["entities"]]
        text = t.target_text(gold)  # raises ContractError if a real entity breaks the schema
        assert t.parse_output(f"```json\n{text}\n```") == gold
        t.render_messages({"text": r["text"]})
        n_ents += len(gold)
    assert n_ents > 300


def test_ectsum_summaries_fit_the_summary_contract(reg, shared_data):
    t = reg.get("report_summary")
    rows = _rows(shared_data / "ectsum" / "val.jsonl")
    fits = [r for r in rows if len(r["transcript"]) <= t.inputs["text"].max_length]
    # Long transcripts must be chunked by the caller; most fit the input limit as they are.
    assert len(fits) > len(rows) / 2
    for r in fits:
        assert t.parse_output(t.target_text(r["summary"])) == r["summary"].strip()
        t.render_messages({"text": r["transcript"]}, variant=1)
