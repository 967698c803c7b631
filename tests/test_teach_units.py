"""Unit tests of the pieces of task teaching (issue 14): calibration math, retrieval few-shot, the
classical model, the task store, label probabilities and abstention, serving plans, the job runner,
upload parsing."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from domain_lm.config import TaskDataset
from domain_lm.data import embedded
from domain_lm.data.records import TaskRecord
from domain_lm.inference.classical import ClassicalModel
from domain_lm.inference.taught import plan_for
from domain_lm.tasks import TaskTemplate, TemplateError, TemplateRegistry
from domain_lm.tasks import calibration as cal
from domain_lm.tasks.adapter_store import AdapterStore, adapter_name
from domain_lm.tasks.fewshot import ExampleIndex, Shot, shot_messages
from domain_lm.train.task_adapter import TeachConfig, parse_examples, planned_steps, read_rows
from services.jobs.runner import JobConflict, JobQueueFull, JobRunner

from .conftest import REPO


@pytest.fixture(scope="module")
def reg():
    return TemplateRegistry.load(REPO / "task_templates")


def sentiment_records(n: int = 300) -> list[TaskRecord]:
    names = {"bearish": "negative", "bullish": "positive", "neutral": "neutral"}
    rows = embedded.records("twitter_fin_sentiment/sentiment")[:n]
    return [TaskRecord("sentiment", "en", {"text": r["text"]}, names[r["label"]]) for r in rows]


# --------------------------------------------------------------------------- calibration


def test_temperature_scaling_recovers_the_temperature_that_made_the_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 4)) * 2
    true_t = 2.5
    probs = cal.softmax(logits, true_t)
    gold = [int(rng.choice(4, p=p)) for p in probs]  # labels drawn from softmax(logits / 2.5): overconfident logits
    fitted = cal.fit_temperature(logits, gold)
    assert fitted == pytest.approx(true_t, rel=0.1)
    report = cal.calibrate(logits, gold)
    assert report["ece_after"] < report["ece_before"] / 2 and report["nll_after"] < report["nll_before"]
    assert cal.fit_temperature(logits[:5], gold[:5]) == 1.0  # too few examples: left alone


def test_per_label_bias_undoes_a_label_the_model_over_answers():
    # A model that adds +1.2 to label 0's score whatever the text: it answers label 0 too often.
    rng = np.random.default_rng(1)
    n = 800
    gold = rng.choice(3, size=n, p=[0.5, 0.25, 0.25])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), gold] += 1.5
    logits[:, 0] += 1.2
    report = cal.calibrate(logits, gold.tolist())
    bias = report["bias"]
    assert bias[0] < bias[1] and bias[0] < bias[2] and sum(bias) == pytest.approx(0.0, abs=1e-9)
    assert report["score_after"] > report["score_before"] + 0.01  # cross-fitted: fitted on one half, scored on the other
    cross = np.asarray(report["cross_fitted"])
    assert (cross == 0).mean() < (logits.argmax(axis=1) == 0).mean()  # label 0 answered less often
    assert report["nll_after"] < report["nll_before"]
    # Too few examples for the cross-fit to fit biases on each half: the temperature only, answers unchanged.
    small = cal.calibrate(logits[: 2 * cal.MIN_BIAS - 1], gold[: 2 * cal.MIN_BIAS - 1].tolist())
    assert not any(small["bias"]) and "cross_fitted" not in small
    # Nothing to undo (no offset, balanced labels): a bias that does not help is not kept.
    fair = rng.normal(size=(n, 3))
    fair_gold = rng.integers(0, 3, n)
    fair[np.arange(n), fair_gold] += 1.5
    kept = cal.calibrate(fair, fair_gold.tolist())
    assert "cross_fitted" not in kept or kept["score_after"] >= kept["score_before"]
    assert max(abs(b) for b in kept["bias"]) < 0.3


def test_a_system_calibrated_with_biases_reports_its_calibrated_answers(reg):
    from domain_lm.train.teach import SystemRun, summarize

    t = reg.get("sentiment")
    rng = np.random.default_rng(2)
    n = 400
    gold = rng.choice(3, size=n, p=[0.5, 0.25, 0.25])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), gold] += 1.5
    logits[:, 0] += 1.2  # over-answers "positive" (labels: positive, negative, neutral)
    held = [TaskRecord("sentiment", "en", {"text": f"post {i}"}, t.output.labels[g]) for i, g in enumerate(gold)]
    plain = [t.output.labels[i] for i in logits.argmax(axis=1)]
    out = summarize(t, held, SystemRun(plain, logits.tolist(), 1.0), n_boot=200, seed=0)
    c = out["calibration"]
    assert set(c["bias"]) == set(t.output.labels) and c["bias"]["positive"] == min(c["bias"].values())
    assert out["score"] == pytest.approx(c["score_after"]) and out["uncalibrated"]["score"] == pytest.approx(c["score_before"])
    assert out["score"] > out["uncalibrated"]["score"] and out["preds"].count("positive") < plain.count("positive")


def test_ece_and_selective_by_hand():
    # Two bins: confidence 0.9 right twice of two (gap 0.1), confidence 0.55 right once of two (gap 0.05).
    assert cal.ece([0.9, 0.9, 0.55, 0.55], [True, True, True, False]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.05)
    rows = cal.selective([0.9, 0.8, 0.6, 0.3], [True, False, True, False], thresholds=(0.5, 0.85))
    assert rows == [
        {"threshold": 0.5, "coverage": 0.75, "accuracy": pytest.approx(2 / 3)},
        {"threshold": 0.85, "coverage": 0.25, "accuracy": 1.0},
    ]


def test_weighted_f1_codes_matches_scikit_learn_and_bootstrap_brackets_it():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    g = rng.integers(0, 6, 300)
    p = np.where(rng.random(300) < 0.7, g, rng.integers(-1, 6, 300))
    mine = cal.weighted_f1_codes(g, p, 6)
    assert mine == pytest.approx(f1_score(g, p, labels=range(6), average="weighted", zero_division=0))
    lo, hi = cal.bootstrap_ci(list(g), list(p), lambda a, b: cal.weighted_f1_codes(a, b, 6), 500, seed=1)
    assert lo < mine < hi and hi - lo < 0.2
    point, dlo, dhi = cal.paired_bootstrap_diff(list(g), list(g), list(p), lambda a, b: cal.weighted_f1_codes(a, b, 6), 300)
    assert point == pytest.approx(1 - mine) and 0 < dlo <= point <= dhi


# --------------------------------------------------------------------------- label contract


def test_label_probabilities_use_the_display_strings_and_abstain(reg):
    out = reg.get("sentiment").output
    probs = out.probabilities({"积极": 0.0, "消极": -1.0, "中性": -1.0}, "zh", temperature=2.0)
    assert probs["positive"] == pytest.approx(1 / (1 + 2 * math.exp(-0.5)))
    assert sum(probs.values()) == pytest.approx(1.0)
    assert out.decide(probs) == ("positive", "positive", probs["positive"], False)
    assert out.decide(probs, threshold=0.9)[0] == "abstain"
    shifted = out.probabilities({"积极": 0.0, "消极": -1.0, "中性": -1.0}, "zh", 2.0, {"positive": -0.5, "neutral": 0.6})
    assert shifted["neutral"] == pytest.approx(math.exp(0.1) / (2 * math.exp(-0.5) + math.exp(0.1)))
    assert out.decide(shifted)[0] == "neutral"  # the bias changes the answer; the temperature alone never does
    data = {**out.model_dump(by_alias=True), "abstain_below": 0.7}
    strict = type(out).model_validate(data)
    assert strict.decide(probs)[3] is True and strict.value_schema()["enum"][-1] == "abstain"
    with pytest.raises(ValueError, match="cannot be a label"):
        type(out).model_validate({**data, "labels": ["abstain", "other"], "display": {}, "aliases": {}})


def test_engine_option_is_checked(reg):
    src = reg.get("extraction").to_dict()
    with pytest.raises(TemplateError, match="label tasks only"):
        TaskTemplate.from_dict({**src, "engine": "classical"})
    with pytest.raises(TemplateError, match="engine"):
        TaskTemplate.from_dict({**reg.get("sentiment").to_dict(), "engine": "gpu"})
    t = TaskTemplate.from_dict({**reg.get("sentiment").to_dict(), "few_shot": {"k": 3}})
    assert t.few_shot.k == 3 and t.engine == "auto"


# --------------------------------------------------------------------------- retrieval few-shot


def test_nearest_examples_are_similar_deterministic_and_never_the_question(reg):
    t = reg.get("sentiment")
    shots = [
        Shot({"text": s}, lab)
        for s, lab in [
            ("The bank raised its dividend after record profit.", "positive"),
            ("Shares slumped after the loan write-down.", "negative"),
            ("The meeting is on Tuesday.", "neutral"),
            ("Profit fell and the dividend was cut.", "negative"),
            ("x" * 3000, "neutral"),  # longer than max_chars: never shown
        ]
    ]
    index = ExampleIndex(t, "en", shots, max_chars=2000)
    assert len(index) == 4
    got = index.nearest({"text": "Record profit lets the bank raise its dividend."}, 2)
    assert got[-1].inputs["text"].startswith("The bank raised")  # the most similar is closest to the question
    assert index.nearest({"text": "Record profit lets the bank raise its dividend."}, 2)[0].inputs == got[0].inputs
    assert all(s.inputs["text"] != "The meeting is on Tuesday." for s in index.nearest({"text": "The meeting is on Tuesday."}, 4))
    msgs = shot_messages(t, {"text": "Profit rose."}, "en", got)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == got[0].output and msgs[-1] == t.render_messages({"text": "Profit rose."})[-1]


def test_template_examples_are_the_pool_before_any_upload(reg):
    t = reg.get("sentiment")
    index = ExampleIndex.from_template(t, "zh")
    assert len(index) == len([e for e in t.examples_for("zh") if e.few_shot]) > 0
    assert all(s.inputs in [e.inputs for e in t.examples_for("zh")] for s in index.nearest({"text": "利润增长"}, 2))


# --------------------------------------------------------------------------- classical


def test_classical_model_learns_real_sentiment(reg):
    t = reg.get("sentiment")
    recs = sentiment_records(1000)
    train, test = [r for i, r in enumerate(recs) if i % 5], recs[::5]
    model = ClassicalModel(t).fit([r.inputs for r in train], [r.output for r in train])
    lp = model.log_proba([r.inputs for r in test])
    assert lp.shape == (200, 3) and np.allclose(np.exp(lp).sum(axis=1), 1.0)
    acc = np.mean([model.labels[i] == r.output for i, r in zip(lp.argmax(axis=1), test)])
    majority = max(np.mean([r.output == lab for r in test]) for lab in model.labels)
    assert acc > majority + 0.05
    assert set(model.choice_logprobs({"text": "Profit rose."}, "zh")) == {"积极", "消极", "中性"}
    two = ClassicalModel(t).fit([{"text": "up"}, {"text": "down"}], ["positive", "negative"])
    assert set(two.label_logprobs({"text": "up"})) == {"positive", "negative"}  # a label never seen is left out
    with pytest.raises(ValueError, match="label tasks only"):
        ClassicalModel(reg.get("extraction"))


# --------------------------------------------------------------------------- task store


def test_store_versions_complete_fail_and_stale(tmp_path):
    store = AdapterStore(tmp_path / "store")
    n1, d1 = store.reserve("stance", "job1", "alice")
    n2, d2 = store.reserve("stance", "job2", "bob")
    assert (n1, n2) == (1, 2) and store.current("stance") is None  # reserved is not complete
    (d1 / "adapter").mkdir()
    (d1 / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 8}))
    v1 = store.complete("stance", 1, {"systems": {}})
    assert store.current("stance") == v1 and v1.adapter == "stance@1" and store.adapters() == {"stance@1": str(d1 / "adapter")}
    store.discard("stance", 2, "job2", "broke")
    assert not d2.exists() and store.reserve("stance", "job3", "carol")[0] == 3  # 2 is never reused
    store.discard("stance", 1, "job1", "late")  # complete versions are never removed
    assert store.versions("stance") == [1]
    # An unfinished version of a process that is gone is removed at the next start on this host.
    info = json.loads((tmp_path / "store" / "stance" / "3" / "job.json").read_text())
    (tmp_path / "store" / "stance" / "3" / "job.json").write_text(json.dumps({**info, "process": "old", "pid": 999_999_999}))
    assert store.remove_stale() == ["stance@3"] and store.versions("stance") == [1]
    assert [e["event"] for e in store.audit_entries()] == ["created", "created", "completed", "failed", "created", "failed"]
    assert adapter_name("stance", 7) == "stance@7"


def test_serving_plan_rules(reg, tmp_path):
    t = reg.get("sentiment")
    store = AdapterStore(tmp_path)
    assert "no uploaded examples" in plan_for(t, None, set()).why
    _, d = store.reserve("sentiment", "j", "a")
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text("{}")
    res = lambda score: {"score": score, "ci": [score - 0.1, score + 0.1], "calibration": {"calibrated": True, "temperature": 1.5}}  # noqa: E731
    v = store.complete(
        "sentiment", 1, {"metric": "weighted_f1", "examples": {"evaluated": 50}, "systems": {"classical": res(0.7), "adapter": res(0.8)}}
    )
    plan = plan_for(t, v, {"sentiment@1"})
    assert (plan.engine, plan.adapter, plan.temperature) == ("llm", "sentiment@1", 1.5) and "beats the classical" in plan.why
    assert plan.bias is None  # the report kept no per-label bias
    v.report["systems"]["adapter"]["calibration"]["bias"] = {"positive": -0.4, "negative": 0.2, "neutral": 0.2}
    assert plan_for(t, v, {"sentiment@1"}).bias == {"positive": -0.4, "negative": 0.2, "neutral": 0.2}
    assert plan_for(t, v, set()).system == "zero_shot"  # the adapter is not loaded: the base model answers
    data = t.to_dict()
    assert plan_for(TaskTemplate.from_dict({**data, "engine": "classical"}), v, {"sentiment@1"}).engine == "classical"
    base = plan_for(TaskTemplate.from_dict({**data, "engine": "base", "few_shot": {"k": 2}}), v, {"sentiment@1"})
    assert (base.adapter, base.few_shot_k, base.system) == (None, 2, "few_shot")
    pinned = plan_for(TaskTemplate.from_dict({**data, "adapter": "nope@3"}), v, {"sentiment@1"})
    assert pinned.adapter is None and "not loaded" in pinned.why
    v.report["systems"]["classical"]["score"] = 0.8
    assert plan_for(t, v, {"sentiment@1"}).engine == "classical"  # auto: at least as good wins


# --------------------------------------------------------------------------- uploads


def test_parse_examples_names_each_bad_row(reg):
    t = reg.get("sentiment")
    data = b'{"text": "fine", "label": "positive"}\n{"text": "", "label": "negative"}\n{"text": "odd", "label": "sideways"}\n'
    parsed = parse_examples(t, read_rows(data, "jsonl"), TaskDataset(task="sentiment"))
    assert len(parsed.records) == 1 and parsed.problem_count == 2
    assert parsed.problems[0] == (2, "input 'text': must not be empty") and "sideways" in parsed.problems[1][1]
    rows = read_rows(b'sentence,y\n"a, b",0\n', "csv")
    parsed = parse_examples(
        t, rows, TaskDataset(task="sentiment", fields={"text": "sentence"}, label_field="y", label_map={"0": "negative"})
    )
    assert [r.inputs for r in parsed.records] == [{"text": "a, b"}] and parsed.records[0].output == "negative"
    with pytest.raises(Exception, match="not UTF-8"):
        read_rows(b"\xff\xfe\x00", "jsonl")
    assert planned_steps(100, TeachConfig(batch_size=8)) == 13 and planned_steps(100, TeachConfig(batch_size=8, max_steps=5)) == 5


# --------------------------------------------------------------------------- jobs


def test_job_runner_bounds_conflicts_cancel_and_history():
    gate = threading.Event()
    runner = JobRunner(workers=1, max_queued=1, history=2)

    def blocked(job):
        gate.wait(10)
        if job.cancel.is_set():
            raise RuntimeError("stopped")
        return {"ok": True}

    first = runner.submit("a", "alice", None, blocked)
    time.sleep(0.2)
    assert first.state == "running"
    with pytest.raises(JobConflict):
        runner.submit("a", "alice", None, blocked)
    second = runner.submit("b", "alice", None, blocked)
    with pytest.raises(JobQueueFull):
        runner.submit("c", "alice", None, blocked)
    runner.cancel(second.id)
    assert second.state == "cancelled"
    gate.set()
    for _ in range(50):
        if first.state == "succeeded":
            break
        time.sleep(0.1)
    assert first.state == "succeeded" and first.result == {"ok": True}
    failing = runner.submit("d", "bob", None, lambda job: 1 / 0)
    time.sleep(0.3)
    assert failing.state == "failed" and failing.error == "division by zero"
    runner.submit("e", "bob", None, lambda job: None)
    time.sleep(0.3)
    assert len(runner.list()) <= 3  # finished jobs beyond the history are forgotten
    runner.close()
