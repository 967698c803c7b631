"""Grounded answers through the task runner: decode-time schemas from the request's input, verification
with one sampled retry, ``UngroundedError``, offsets in the answer, and the eval's ungrounded count."""

from __future__ import annotations

import asyncio
import json

import pytest

from domain_lm.eval.harness import predict, score_predictions
from domain_lm.inference.fake import FakeEngine
from domain_lm.inference.tasks import RESAMPLE_TEMPERATURE, TaskRunner
from domain_lm.tasks import TemplateError, TemplateRegistry
from domain_lm.tasks.grounding import UngroundedError

from .conftest import REPO

TEXT = "Northbridge Capital said on Tuesday that Maria Lopez will lead its new office in Singapore. Revenue was $1,496.5 million in 2022."
GOOD = [{"text": "Northbridge Capital", "type": "ORG"}, {"text": "Maria Lopez", "type": "PER"}]
BAD = [{"text": "Goldman Sachs", "type": "ORG"}]


@pytest.fixture(scope="module")
def reg() -> TemplateRegistry:
    return TemplateRegistry.load(REPO / "task_templates")


def _engine(*answers: object) -> FakeEngine:
    """An engine answering ``answers`` in turn (the last one repeats); its ``requests`` record each call."""
    texts = [a if isinstance(a, str) else json.dumps(a) for a in answers]
    fake = FakeEngine()
    fake.script = lambda r: texts[min(len(fake.requests), len(texts)) - 1]
    return fake


def test_the_decode_schema_offers_only_spans_and_numbers_of_the_request(reg):
    runner = TaskRunner(FakeEngine())
    ents = runner.build_request(reg.get("entities"), {"text": TEXT}).json_schema
    offered = ents["items"]["properties"]["text"]["enum"]
    assert "Maria Lopez" in offered and "Northbridge Capital" in offered and all(s in TEXT for s in offered)
    ext = runner.build_request(reg.get("extraction"), {"text": TEXT, "field": "revenue"}).json_schema
    assert "x-grounded" not in json.dumps(ext) and "x-grounded" not in json.dumps(ents)
    numbers = json.dumps(ext["properties"]["value"])
    assert "1496.5" in numbers and "2022" in numbers and "1496.6" not in numbers
    # Without the inputs (docs, a client's view) the schema is the template's, keyword stripped.
    assert "enum" not in json.dumps(reg.get("entities").output.constraint("en").json_schema["items"]["properties"]["text"])


def test_a_grounded_answer_carries_the_offsets_of_its_spans(reg):
    fake = _engine(GOOD)
    answer = TaskRunner(fake).run(reg.get("entities"), {"text": TEXT})
    assert [TEXT[e["start"] : e["end"]] for e in answer.output] == ["Northbridge Capital", "Maria Lopez"]
    assert len(fake.requests) == 1
    ev = "Revenue was $1,496.5 million in 2022"
    raw = {"evidence": ev, "value": 1496.5, "unit": "USD million", "period": "2022"}
    out = TaskRunner(_engine(raw)).run(reg.get("extraction"), {"text": TEXT, "field": "revenue"}).output
    assert TEXT[out["evidence_start"] : out["evidence_end"]] == ev and out["value"] == 1496.5


def test_an_ungrounded_answer_is_resampled_once(reg):
    fake = _engine(BAD, GOOD)
    answer = TaskRunner(fake).run(reg.get("entities"), {"text": TEXT})
    assert [e["text"] for e in answer.output] == ["Northbridge Capital", "Maria Lopez"]
    first, second = fake.requests
    assert first.temperature == 0.0 and second.temperature == RESAMPLE_TEMPERATURE and second.messages == first.messages


def test_two_ungrounded_answers_raise_a_contract_error_carrying_the_answer(reg):
    fake = _engine(BAD)
    with pytest.raises(UngroundedError, match=r"\$\[0\]\.text") as err:
        TaskRunner(fake).run(reg.get("entities"), {"text": TEXT})
    assert err.value.task == "entities" and err.value.value == BAD and len(fake.requests) == 2
    fake = _engine(GOOD, BAD, BAD)
    out = TaskRunner(fake).run_batch(reg.get("entities"), [{"text": TEXT}, {"text": TEXT}], return_exceptions=True)
    assert [type(a).__name__ for a in out] == ["TaskAnswer", "UngroundedError"]
    assert len(fake.requests) == 3  # one batch of two, then one retry
    with pytest.raises(UngroundedError):
        asyncio.run(TaskRunner(_engine(BAD)).arun(reg.get("entities"), {"text": TEXT}))


def test_the_eval_counts_ungrounded_spans_and_scores_them_as_wrong(reg):
    template = reg.get("entities")
    preds = predict(_engine(GOOD, BAD, BAD), template, [{"text": TEXT}, {"text": TEXT}])
    assert preds[1].output == BAD and "not grounded" in (preds[1].error or "")
    scores = score_predictions(template, [GOOD, GOOD], preds)
    assert scores["ungrounded_answers"] == 1 and scores["ungrounded_spans"] == 1 and scores["grounded_spans"] == 2
    assert scores["invalid"] == 0 and scores["precision"] == pytest.approx(2 / 3)


def test_a_keyword_naming_an_undeclared_or_non_text_input_fails_template_loading(reg, tmp_path):
    spec = reg.get("entities").model_dump(mode="json", by_alias=True, exclude_none=True)
    spec["output"]["schema"]["items"]["properties"]["text"]["x-grounded"] = {"input": "body", "kind": "span"}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TemplateError, match="input 'body'"):
        TemplateRegistry.load(tmp_path)
