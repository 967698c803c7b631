"""Eval harness: known predictions (scripted engine) score to hand-computed numbers; invalid outputs
are counted, not dropped; reports, baseline, the standalone CLI and the eval stage on the tiny model."""

from __future__ import annotations

import json

import pytest

from domain_lm.data.records import TaskRecord as Record
from domain_lm.eval import harness as H
from domain_lm.eval.report import markdown_table, write_report
from domain_lm.inference import create_engine

from .conftest import REPO

TEMPLATES = str(REPO / "task_templates")


@pytest.fixture(scope="module")
def registry():
    from domain_lm.tasks import TemplateRegistry

    return TemplateRegistry.load(TEMPLATES)


def _scripted(answers: dict[str, str]):
    """A fake engine answering by which record text appears in the last user turn."""

    def script(req):
        user = req.messages[-1]["content"]
        return next(a for key, a in answers.items() if key in user)

    return create_engine("fake-model", kind="fake", script=script)


def test_classification_with_known_predictions(registry):
    t = registry.get("sentiment")
    recs = [
        Record("sentiment", "en", {"text": x}, y)
        for x, y in [("AAA up", "positive"), ("BBB up", "positive"), ("CCC down", "negative"), ("DDD flat", "neutral")]
    ]
    engine = _scripted({"AAA": "positive", "BBB": "negative", "CCC": "Negative.", "DDD": "maybe"})
    s = H.evaluate_records(engine, t, recs)
    # pos F1 2/3, neg F1 2/3, neu F1 0 (its one answer broke the contract)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx(4 / 9)
    assert s["weighted_f1"] == pytest.approx(0.5)
    assert s["invalid"] == 1 and s["n"] == 4
    assert s["invalid_samples"][0]["raw"] == "maybe"
    # every request carried the decode-time constraint (choices), as the service sends it
    assert all(r.choices == t.choices("en") for r in engine.requests)


def test_chinese_labels_are_scored_on_canonical_values(registry):
    t = registry.get("sentiment")
    recs = [
        Record("sentiment", "zh", {"text": "甲银行利润增长"}, "positive"),
        Record("sentiment", "zh", {"text": "乙银行亏损"}, "negative"),
    ]
    s = H.evaluate_records(_scripted({"甲": "积极", "乙": "积极"}), t, recs)
    assert s["accuracy"] == pytest.approx(0.5) and s["invalid"] == 0


def test_entities_with_known_predictions(registry):
    t = registry.get("entities")
    gold1 = [{"text": "Alpha Bank", "type": "ORG"}, {"text": "Ann Lee", "type": "PER"}]
    gold2 = [{"text": "London", "type": "LOC"}]
    recs = [
        Record("entities", "en", {"text": "Alpha Bank hired Ann Lee."}, gold1),
        Record("entities", "en", {"text": "A branch in London."}, gold2),
    ]
    pred1 = json.dumps([{"text": "Alpha Bank", "type": "ORG"}, {"text": "Ann Lee", "type": "ORG"}])
    s = H.evaluate_records(_scripted({"Alpha": pred1, "London": "not json"}), t, recs)
    # tp 1 of 2 predicted and 3 gold: P 1/2, R 1/3, F1 0.4; the broken JSON answer is invalid
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((0.5, 1 / 3, 0.4))
    assert s["invalid"] == 1


def test_extraction_numeric_tolerance(registry):
    t = registry.get("extraction")
    gold = {"value": 12.5, "unit": "USD million", "period": "2022", "evidence": "revenue of 12.5 million dollars"}
    recs = [
        Record("extraction", "en", {"text": "X revenue of 12.5 million dollars in 2022.", "field": "revenue", "period": None}, gold),
        Record(
            "extraction",
            "en",
            {"text": "Y revenue of 3 million dollars in 2022.", "field": "revenue", "period": None},
            {**gold, "value": 3.0, "evidence": "revenue of 3 million dollars"},
        ),
    ]
    near = json.dumps({**gold, "value": 12.6})  # within 1 %
    far = json.dumps({"value": 3.5, "unit": "USD million", "period": "2022", "evidence": "revenue of 3 million dollars"})
    s = H.evaluate_records(_scripted({"X revenue": near, "Y revenue": far}), t, recs)
    assert s["exact_match"] == pytest.approx(0.5)
    assert s["numeric_match"] == pytest.approx(0.5) and s["numeric_n"] == 2
    assert s["field_accuracy"] == pytest.approx(7 / 8)


def test_summary_rouge(registry):
    t = registry.get("report_summary")
    recs = [
        Record("report_summary", "en", {"text": "Long report one."}, "the cat sat on the mat"),
        Record("report_summary", "zh", {"text": "报告二"}, "营业收入增长"),
    ]
    s = H.evaluate_records(_scripted({"one": "the cat on the mat", "报告二": "收入增长了"}), t, recs)
    assert s["rougeL"] == pytest.approx((10 / 11 + 8 / 11) / 2)  # word-level en, char-level zh
    assert s["rouge2"] == pytest.approx(2 / 3)


def test_baseline_and_report(tmp_path, registry):
    from domain_lm.data.demo_tasks import demo_examples
    from domain_lm.data.records import split_records

    t = registry.get("sentiment")
    recs = [Record("sentiment", "en", e["inputs"], e["output"]) for e in demo_examples(t, "en")]
    train, held = split_records(recs, 0.25, seed=1)
    b = H.evaluate_baseline(t, train, held)
    assert b["n"] == len(held) and b["weighted_f1"] > 0.8  # the synthetic demo is lexically easy
    assert H.evaluate_baseline(registry.get("entities"), [], held) is None  # label tasks only

    report = {
        "title": "t",
        "tasks": {
            "sentiment": {
                "metric": "classification",
                "systems": {
                    "base": {"weighted_f1": 0.25, "accuracy": 0.5, "macro_f1": 0.2, "invalid": 3, "n": 8},
                    "baseline (tf-idf+lr)": b,
                },
            }
        },
    }
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["tasks"]["sentiment"]["systems"]["base"]["invalid"] == 3
    md = paths["markdown"].read_text()
    assert "| sentiment | weighted_f1 | base | 0.250 |" in md and "3 / 8" in md
    assert paths["plot"].stat().st_size > 1000
    assert "baseline (tf-idf+lr)" in markdown_table(report)


def test_cli_standalone_eval_on_tiny_model(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from domain_lm.cli import app

    rows = [{"sentence": f"Bank {i} {'rose' if i % 2 else 'fell'}.", "y": "1" if i % 2 else "0"} for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            f"tiny={tiny_model_dir}",
            "--task",
            "sentiment",
            "--data",
            str(data),
            "--field",
            "text=sentence",
            "--label-field",
            "y",
            "--label-map",
            "1=positive",
            "--label-map",
            "0=negative",
            "--engine",
            "hf",
            "--out",
            str(tmp_path / "rep"),
            "--templates",
            TEMPLATES,
            "--baseline-train",
            str(data),
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    s = rep["tasks"]["sentiment"]["systems"]["tiny"]
    assert s["n"] == 6 and s["invalid"] == 0  # label choice is enforced at decode time
    assert all(x["pred"] in ("positive", "negative", "neutral") and x["gold"] in ("positive", "negative") for x in s["samples"])
    assert rep["tasks"]["sentiment"]["systems"]["baseline (tf-idf+lr)"]["accuracy"] == 1.0  # fit and scored on the same rows


def test_eval_stage_scores_base_and_baseline(tmp_path, tiny_model_dir):
    from domain_lm.config import build_config
    from domain_lm.pipeline.run import run_stage

    cfg = build_config(
        {
            "run": {"name": "ev", "output_dir": str(tmp_path / "runs")},
            "base_model": {"name": str(tiny_model_dir)},
            "tasks": {"templates_dir": TEMPLATES, "demo_tasks": ["sentiment", "extraction"], "demo_langs": ["en"]},
            "eval": {"engine": "hf", "max_examples": 3},
        }
    )
    run_stage("base", cfg)
    res, _ = run_stage("eval", cfg)
    rep = json.loads(res.artefact("report").read_text())
    assert set(rep["tasks"]) == {"sentiment", "extraction"}
    assert set(rep["tasks"]["sentiment"]["systems"]) == {"base", "baseline (tf-idf+lr)"}
    assert rep["tasks"]["extraction"]["systems"]["base"]["n"] == 3
    assert "sentiment/base/weighted_f1" in res.metrics and "sentiment/baseline/weighted_f1" in res.metrics
    assert res.artefact("report_plot").is_file() and res.artefact("report_markdown").is_file()
