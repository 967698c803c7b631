"""The scorecard: per-example statistics reproduce every headline metric exactly, bootstrap intervals
are seeded and paired, and the verdicts follow the intervals."""

from __future__ import annotations

import random

import numpy as np
import pytest

from domain_lm.eval import bootstrap as B
from domain_lm.eval import scorecard as S
from domain_lm.tasks.metrics import primary

from .conftest import REPO


@pytest.fixture(scope="module")
def registry():
    from domain_lm.tasks import TemplateRegistry

    return TemplateRegistry.load(str(REPO / "task_templates"))


def _noisy_labels(gold, labels, accuracy, rng, invalid=0.0):
    out = []
    for g in gold:
        u = rng.random()
        out.append(None if u < invalid else g if u < invalid + accuracy else rng.choice(labels))
    return out


def _cases(registry):
    rng = random.Random(0)
    sent = registry.get("sentiment")
    labels = list(sent.output.classes)
    gold = [rng.choice(labels) for _ in range(60)]
    yield sent, gold, _noisy_labels(gold, labels, 0.6, rng, invalid=0.1)
    ent = registry.get("entities")
    egold = [[{"text": f"Bank {i}", "type": "ORG"}] * (i % 3) + [{"text": "Ann", "type": "PER"}] for i in range(30)]
    epred = [g[: i % 2 + 1] + ([{"text": "X", "type": "LOC"}] if i % 4 == 0 else []) if i % 5 else None for i, g in enumerate(egold)]
    yield ent, egold, epred
    ext = registry.get("extraction")
    xgold = [{"value": float(i), "unit": "USD", "period": "2020", "evidence": f"{i} USD"} for i in range(20)]
    xpred = [dict(g, value=g["value"] + (i % 3 == 0)) if i % 7 else None for i, g in enumerate(xgold)]
    yield ext, xgold, xpred
    summ = registry.get("report_summary")
    yield summ, ["revenue rose on loan demand", "costs fell"], ["revenue rose", None]


def test_per_example_statistics_reproduce_each_headline_metric(registry):
    for template, gold, pred in _cases(registry):
        out = template.output
        st = B.example_stats(
            template.metric,
            [out.metric_value(v, template.metric) for v in gold],
            [None if v is None else out.metric_value(v, template.metric) for v in pred],
            labels=out.classes,
            lang="en",
        )
        want = primary(template.metric, template.score(gold, pred, lang="en"))
        assert st.value() == pytest.approx(want, abs=1e-12), template.name
        counts = np.ones((1, len(gold)))  # a "resample" that draws every example once is the sample itself
        assert st.values(counts)[0] == pytest.approx(want, abs=1e-12)


def test_intervals_are_seeded_cover_the_estimate_and_shrink_with_data(registry):
    t = registry.get("sentiment")
    rng = random.Random(1)
    labels = list(t.output.classes)
    widths = []
    for n in (50, 800):
        gold = [rng.choice(labels) for _ in range(n)]
        row = S.task_scorecard(t, gold, {"base": _noisy_labels(gold, labels, 0.5, rng)}, final=None, seed=7)
        cell = row["cells"]["base"]
        assert cell["low"] < cell["score"] < cell["high"]
        widths.append(cell["high"] - cell["low"])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n)
    gold = [rng.choice(labels) for _ in range(100)]
    pred = _noisy_labels(gold, labels, 0.5, rng)
    a = S.task_scorecard(t, gold, {"base": pred}, final=None, seed=3)["cells"]["base"]
    b = S.task_scorecard(t, gold, {"base": pred}, final=None, seed=3)["cells"]["base"]
    c = S.task_scorecard(t, gold, {"base": pred}, final=None, seed=4)["cells"]["base"]
    assert a == b and (a["low"], a["high"]) != (c["low"], c["high"])


def test_verdicts_follow_the_paired_bootstrap(registry):
    t = registry.get("sentiment")
    rng = random.Random(2)
    labels = list(t.output.classes)
    gold = [rng.choice(labels) for _ in range(300)]
    weak = _noisy_labels(gold, labels, 0.2, rng)
    strong = _noisy_labels(gold, labels, 0.8, rng)
    perfect = list(gold)

    row = S.task_scorecard(t, gold, {"base": weak, "sft": strong, S.BASELINE: perfect}, final="sft")
    assert row["beats_base"]["answer"] == "yes" and row["beats_base"]["low"] > 0 and not row["beats_base"]["intervals_overlap"]
    assert row["needs_llm"]["answer"] == "no"  # the classical baseline is better
    assert "as good or better" in S.needs_llm_text(row) and S.beats_base_text(row).startswith("**yes**")

    row = S.task_scorecard(t, gold, {"base": strong, "ppo": weak, S.BASELINE: weak}, final="ppo")
    assert row["beats_base"]["answer"] == "worse" and row["needs_llm"]["answer"] == "no"
    row = S.task_scorecard(t, gold, {"base": strong, "ppo": strong, S.BASELINE: weak}, final="ppo")
    assert row["beats_base"]["answer"] == "no" and row["beats_base"]["diff"] == 0  # identical systems: within noise
    assert row["needs_llm"]["answer"] == "yes"

    ent = registry.get("entities")
    egold = [[{"text": "A", "type": "ORG"}]] * 10
    row = S.task_scorecard(ent, egold, {"base": [None] * 10, "sft": egold}, final="sft")
    assert row["needs_llm"] == {"answer": "n/a", "why": "no classical baseline for this output kind"}


def test_markdown_and_compact_rendering(registry):
    t = registry.get("sentiment")
    gold = ["positive", "negative", "neutral"] * 20
    row = S.task_scorecard(t, gold, {"base": ["neutral"] * 60, "sft": gold, S.BASELINE: gold}, final="sft")
    row["synthetic"] = True
    card = {"rows": [row], "seed": 42, "notes": ["sentiment: held-out examples from x (60)"]}
    md = S.markdown(card)
    header = md.splitlines()[0]
    assert header.startswith("| task | metric | held-out n | base | after SFT | classical baseline |")
    assert "| sentiment (synthetic data) | weighted_f1 | 60 | 0.167 [" in md and "- sentiment: held-out examples" in md
    (line,) = S.compact_lines(card)
    assert line.startswith("sentiment") and "sft 1.00±0.00" in line and "beats base: yes, needs LLM: no" in line
    assert S.final_system(["base", "pretrain", "sft", "dpo", "ppo"], ("ppo", "dpo", "sft", "pretrain", "base")) == "ppo"
    assert S.final_system(["base"], ("ppo", "base")) is None


def test_run_report_opens_with_the_scorecard(tmp_path, registry):
    from domain_lm.eval.report import write_report as write_eval_report
    from domain_lm.pipeline.report import build_markdown, scorecard_lines
    from domain_lm.pipeline.store import Run

    t = registry.get("sentiment")
    gold = ["positive", "negative", "neutral"] * 30
    row = S.task_scorecard(t, gold, {"base": ["neutral"] * 90, "sft": gold, S.BASELINE: gold}, final="sft")
    run = Run(tmp_path / "r")
    with run.writing("sft") as w:
        w.result.metrics = {"train_loss": 1.0}
    assert scorecard_lines(run) == []  # no eval yet: no scorecard, no error
    with run.writing("eval") as w:
        report = {"tasks": {"sentiment": {"metric": "classification", "systems": {"base": {"weighted_f1": 0.17, "n": 90}}}},
                  "scorecard": {"rows": [row], "seed": 42, "notes": []}}
        w.add_artefact("report", write_eval_report(report, w.path)["json"].name)
    text, _ = build_markdown(run, None)
    assert text.index("## Scorecard") < text.index("## Stage timeline")
    assert "| sentiment | weighted_f1 | 90 | 0.167 [" in text
    lines = scorecard_lines(run)
    assert lines[0].startswith("scorecard") and "beats base: yes" in lines[1]
