"""Teaching a task for real on the transformers engine with the tiny model: the adapter is trained in
a child process from the served model, loaded into the running engine (PEFT, under its lock) and
changes the task's answers; progress is reported; a cancelled job leaves nothing behind."""

from __future__ import annotations

import threading

import pytest

from domain_lm.data import embedded
from domain_lm.data.records import TaskRecord
from domain_lm.inference import GenerationRequest, create_engine
from domain_lm.tasks import TemplateRegistry
from domain_lm.tasks.adapter_store import AdapterStore
from domain_lm.train.task_adapter import TeachConfig, TrainingFailed, train_in_subprocess
from domain_lm.train.teach import TeachJob, teach

from .conftest import REPO

pytestmark = pytest.mark.slow
NAMES = {"bearish": "negative", "bullish": "positive", "neutral": "neutral"}


def records(n: int) -> list[TaskRecord]:
    rows = embedded.records("twitter_fin_sentiment/sentiment")[::11][:n]
    return [TaskRecord("sentiment", "en", {"text": r["text"]}, NAMES[r["label"]]) for r in rows]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = create_engine(tiny_model_dir, kind="hf")
    yield eng
    eng.close()


def test_teach_trains_hot_loads_and_changes_answers(engine, tiny_model_dir, tmp_path):
    t = TemplateRegistry.load(REPO / "task_templates").get("sentiment")
    store = AdapterStore(tmp_path)
    progress: list[tuple[str, float | None, str]] = []
    cfg = TeachConfig(max_steps=4, batch_size=4, max_eval=20, n_boot=200)
    job = TeachJob(t, records(80), store, str(tiny_model_dir), engine, cfg, progress=lambda *a: progress.append(a))
    report = teach(job)
    assert report["version"] == 1 and "sentiment@1" in engine.adapters
    assert report["systems"]["adapter"]["train"]["steps"] == 4
    phases = [p for p, _, _ in progress]
    assert phases.index("training") < phases.index("loading") < phases.index("evaluating") < phases.index("serving")
    assert any(p == "training" and f is not None and f > 0 for p, f, _ in progress)  # step progress came back from the child
    assert (store.root / "sentiment" / "1" / "adapter" / "adapter_config.json").is_file()
    msgs = t.render_messages({"text": "Stocks crash as the bank misses estimates."})
    choices = t.choices("en")
    base, tuned = engine.generate_batch(
        [GenerationRequest(messages=msgs, choices=choices, score_choices=True, adapter=a) for a in (None, "sentiment@1")]
    )
    assert base.choice_logprobs != tuned.choice_logprobs  # the loaded adapter is in the answer path
    assert set(report["comparison"]["systems"]) == {"zero_shot", "few_shot"}


def test_a_cancelled_training_is_stopped_and_removed(tiny_model_dir, tmp_path):
    from domain_lm.tasks.adapter_store import write_records
    from domain_lm.train.task_adapter import TrainSpec

    t = TemplateRegistry.load(REPO / "task_templates").get("sentiment")
    write_records(tmp_path / "train.jsonl", records(40))
    spec = TrainSpec(
        model_path=str(tiny_model_dir),
        template_yaml=t.to_yaml(),
        records_path=str(tmp_path / "train.jsonl"),
        out_dir=str(tmp_path / "adapter"),
        work_dir=str(tmp_path / "work"),
        config=TeachConfig(max_steps=500, batch_size=2),
    )
    cancel = threading.Event()
    threading.Timer(3.0, cancel.set).start()
    with pytest.raises(TrainingFailed, match="cancelled"):
        train_in_subprocess(spec, lambda f, m: None, cancel)
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()
