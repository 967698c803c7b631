"""The OpenAI-compatible endpoints through the real ``openai`` SDK against a live uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest

from domain_lm.inference.fake import FakeEngine
from services.app import create_app
from services.security import hash_key
from services.settings import ServiceSettings

from .conftest import REPO

openai = pytest.importorskip("openai")
KEY = "sdk-key-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import uvicorn

    templates = tmp_path_factory.mktemp("tpl") / "task_templates"
    shutil.copytree(REPO / "task_templates", templates)

    def script(req):
        if req.json_schema is not None:
            return json.dumps({"answer": "yes"})
        return f"echo({req.adapter or 'base'}): " + req.messages[-1]["content"]

    engine = FakeEngine(model_name="bank-lm", adapters={"risk": "/adapters/risk"}, script=script)
    app = create_app(ServiceSettings(api_keys=f"sdk:{hash_key(KEY)}", templates_dir=str(templates)), engine=engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1", engine
    server.should_exit = True
    thread.join(timeout=10)


def test_models_and_chat(live):
    base_url, engine = live
    c = openai.OpenAI(base_url=base_url, api_key=KEY)
    assert [m.id for m in c.models.list()] == ["bank-lm", "risk"]
    r = c.chat.completions.create(model="bank-lm", messages=[{"role": "user", "content": "hello"}], max_tokens=20, temperature=0)
    assert r.choices[0].message.content == "echo(base): hello"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    r = c.chat.completions.create(model="risk", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "echo(risk): hi" and engine.requests[-1].adapter == "risk"


def test_json_schema_response_format_is_passed_as_a_constraint(live):
    base_url, engine = live
    c = openai.OpenAI(base_url=base_url, api_key=KEY)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    r = c.chat.completions.create(
        model="bank-lm", messages=[{"role": "user", "content": "q"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content) == {"answer": "yes"}
    assert engine.requests[-1].json_schema == schema


def test_streaming_and_errors(live):
    base_url, _ = live
    c = openai.OpenAI(base_url=base_url, api_key=KEY)
    chunks = list(c.chat.completions.create(model="bank-lm", messages=[{"role": "user", "content": "s"}], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "echo(base): s"
    assert chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
