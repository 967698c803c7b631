"""Finding 8 on the transformers engine: a prompt longer than the model's context is a clear 4xx,
and the grammar cache keyed on client schemas stays bounded. (The vLLM case, ``"stop": ""``, runs on
the real vLLM engine in ``tests/test_inference_vllm.py``.)"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from domain_lm.inference import EngineError, GenerationRequest
from domain_lm.inference import hf_engine as hf

from .conftest import ADMIN, make_app


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = hf.HFEngine(tiny_model_dir, model_name="tiny")
    yield eng
    eng.close()


def test_prompt_longer_than_the_context_is_refused_before_generation(engine):
    assert engine.context_length == 2048
    long = [{"role": "user", "content": "bank " * 3000}]
    with pytest.raises(EngineError, match="context is 2048 tokens"):
        engine.generate_batch([GenerationRequest(messages=long, max_tokens=4)])
    # max_tokens is a bound (as in vLLM): an answer that would run past the context stops at its end.
    near = [{"role": "user", "content": "bank " * 2030}]
    capped = engine.generate_batch([GenerationRequest(messages=near, max_tokens=500)])[0]
    assert capped.prompt_tokens < 2048 and capped.prompt_tokens + capped.completion_tokens <= 2048
    ok = engine.generate_batch([GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=2)])[0]
    assert ok.completion_tokens <= 2


def test_the_service_answers_400_for_an_over_long_prompt(engine, templates, keys_file):
    app = make_app(templates, keys_file, engine=engine)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "bank " * 3000}], "max_tokens": 4})
        assert r.status_code == 400 and r.json()["detail"]["error"] == "engine_rejected" and "2048" in r.json()["detail"]["message"]
        r = c.post("/v1/tasks/report_summary", json={"input": {"text": "bank " * 3000}})
        assert r.status_code == 400 and r.json()["detail"]["error"] == "engine_rejected"
        assert c.get("/readyz").status_code == 200  # nothing broke


def test_grammar_cache_is_bounded(engine, monkeypatch):
    if engine._compiler is None:
        pytest.skip("xgrammar not installed: no grammar cache")
    monkeypatch.setattr(hf, "GRAMMAR_CACHE_SIZE", 4)
    schemas = [
        {"type": "object", "properties": {f"field_{i}": {"type": "string", "maxLength": 3}}, "required": [f"field_{i}"]} for i in range(10)
    ]
    for s in schemas:
        engine._grammar(GenerationRequest(messages=[{"role": "user", "content": "x"}], json_schema=s))
    assert len(engine._grammar_cache) == 4
    keys = list(engine._grammar_cache)
    assert all(f"field_{i}" in k for k, i in zip(keys, range(6, 10)))  # the most recent ones stay
