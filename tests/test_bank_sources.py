"""Task records from the shared datasets (``domain_lm.data.bank_sources``): every source fits its
template, grounded answers occur in their input, splits keep documents whole; and the benches
that train on them run end to end with the tiny model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from domain_lm.data.bank_sources import SOURCES, lead, load_source, salient_sentences
from domain_lm.data.records import split_records
from domain_lm.errors import DataError
from domain_lm.tasks import TemplateRegistry
from domain_lm.tasks.grounding import ungrounded

from .conftest import REPO

#: Sources whose records come from documents (several records per group).
GROUPED = {"finer_ord", "fin_ner", "tatqa", "tatqa_tables", "kpi_edgar", "ectsum", "ectsum_key_points"}


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry.load(REPO / "task_templates")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_source_fits_its_template_and_is_grounded(name, shared_data, registry):
    records = load_source(name, shared_data)
    assert len(records) >= 150, name
    for r in records:
        t = registry.get(r.task)
        t.validate_inputs(r.inputs)
        text = t.target_text(r.output, r.lang)
        assert '"start":' not in text and '"end":' not in text  # targets carry only what the contract asks, never offsets
        schema = getattr(t.output, "schema_", None)
        if schema is not None:
            assert ungrounded(r.output, schema, r.inputs) == [], (name, r.output)
    if name in GROUPED:
        groups = defaultdict(int)
        for r in records:
            groups[r.group] += 1
        assert None not in groups and max(groups.values()) > 1
        train, held = split_records(records, 0.2, 42)
        assert {r.group for r in train}.isdisjoint({r.group for r in held})
        assert held or len(groups) < 10  # FIN NER has 5 agreements: with 20% held out, possibly none


def test_tatqa_evidence_is_the_row_or_sentence_holding_the_answer(shared_data):
    records = load_source("tatqa", shared_data)
    for r in records:
        ev, text = r.output["evidence"], r.inputs["text"]
        assert ev in text and (ev in text.split("\n") or "|" not in ev)
    assert sum("|" in r.output["evidence"] for r in records) > len(records) / 2  # mostly table rows


def test_tatqa_question_year_is_the_requested_period(shared_data):
    """ "What was X in 2018?" over a table with 2019 and 2018 columns: without the year the field
    alone cannot say which column is meant, so the year the field loses must come in as the period."""
    contexts = json.loads((shared_data / "tatqa" / "dev.json").read_text())
    questions = {" ".join(q["question"].split()) for c in contexts for q in c["questions"]}
    records = load_source("tatqa", shared_data)
    dated = [r for r in records if r.inputs["period"] is not None]
    assert len(dated) > len(records) / 3
    for r in records:
        p, field = r.inputs["period"], r.inputs["field"]
        if p is None:
            continue
        assert re.fullmatch(r"(19|20)\d\d", p) and p not in field
        assert any(q.endswith(f"{p}?") and field in q for q in questions), (field, p)
        assert r.output["period"] in (p, None)


def test_tatqa_table_lookups_read_the_named_row_and_year_column(shared_data):
    """A lookup's answer is the cell in its row under its year's column, and its report is on the same
    side of the split as the report's own questions."""
    from domain_lm.data.embedded_sources import parse_amount, table_cell_value

    lookups = load_source("tatqa_tables", shared_data)
    assert len(lookups) > 1000 and len({r.group for r in lookups}) > 150
    for r in lookups:
        line, year = r.output["evidence"], r.inputs["period"]
        assert line in r.inputs["text"].split("\n") and line.split(" | ")[0].rstrip(":").strip() == r.inputs["field"]
        in_year = [table_cell_value(c) for c in line.split(" | ")[1:] if year in c.rsplit(": ", 1)[0]]
        assert len(in_year) == 1 and parse_amount(in_year[0]) == r.output["value"] and r.output["period"] == year
    questions = load_source("tatqa", shared_data)
    held_lookups = {r.group for r in split_records(lookups, 0.2, 42)[1]}
    train_questions = {r.group for r in split_records(questions, 0.2, 42)[0]}
    assert held_lookups and held_lookups.isdisjoint(train_questions)


def test_salient_sentences_keep_the_figures_in_order_within_the_limit():
    transcript = "\n".join(["Good morning and welcome.", "Revenue rose 11% to $481 million.", "Thank you, operator.",
                            "We expect full-year EPS of $1.24.", "Next question please."])
    picked = salient_sentences(transcript, max_chars=80)
    assert picked == "Revenue rose 11% to $481 million.\nWe expect full-year EPS of $1.24."
    assert len(salient_sentences(transcript * 50, max_chars=300)) <= 300
    assert lead("One. Two! Three? Four.", 3) == "One.\nTwo!\nThree?" and lead("甲。乙！丙。", 1, "zh") == "甲。"


def test_an_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="known: finer_ord"):
        load_source("finer", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_source("finer_ord", tmp_path)


@pytest.mark.slow
def test_data_budget_and_task_interaction_benches_run_and_resume(shared_data, tiny_model_dir, tmp_path):
    """Both benches on the tiny model: tables, plots and per-cell results; a rerun trains nothing."""
    common = ["--lang", "en", "--model", str(tiny_model_dir), "--data", str(shared_data), "--tasks", "sentiment_en,entities_en",
              "--epochs", "1", "--test-max", "2", "--max-seq-len", "2048", "--out", str(tmp_path)]

    # The transformers engine: this checks the benches' bookkeeping, and each of its evaluations would
    # otherwise start a vLLM engine (~40 s each here); vLLM serving is tested on its own.
    env = {**os.environ, "DOMAIN_LM_BENCH_ENGINE": "hf"}

    def run(script: str, *extra: str) -> str:
        done = subprocess.run([sys.executable, str(REPO / "bench" / script), *common, *extra], capture_output=True, text=True,
                              timeout=900, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = run("data_budget.py", "--budgets", "2,3")
    assert "| base |" in out and "| 3 |" in out
    table = json.loads((tmp_path / "data_budget_en.json").read_text())["table"]
    assert set(table) == {"0", "2", "3"} and table["3"]["entities_en"]["examples"] == 3
    assert (tmp_path / "data_budget_en.png").stat().st_size > 0
    cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
    out = run("task_interaction.py", "--per-task", "3")
    inter = json.loads((tmp_path / "task_interaction_en.json").read_text())
    assert set(inter["scores"]) == {"base", "all", "sentiment_en", "entities_en"}
    assert set(inter["interaction"]["entities_en"]) == {"sentiment_en", "entities_en"}
    # The all-together run is the data-budget cell of the same N: two new cells (each task alone), not three.
    assert len(list((tmp_path / "cells").iterdir())) == len(cells) + 2
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "cells").glob("*/result.json")}
    run("task_interaction.py", "--per-task", "3")
    assert {p: p.stat().st_mtime for p in (tmp_path / "cells").glob("*/result.json")} == mtimes
