"""API tests: TestClient (and an async client for concurrency) with the scripted fake engine."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient

from domain_lm.errors import ConfigError
from domain_lm.inference.fake import FakeEngine
from services.app import create_app
from services.security import KeyStore, hash_key
from services.settings import ServiceSettings

from .conftest import REPO

ADMIN, READER, SENTI = "admin-key-123", "reader-key-456", "senti-key-789"
KEYS = ",".join([f"ops:{hash_key(ADMIN)}:*:admin", f"analyst:{hash_key(READER)}:*", f"teller:{hash_key(SENTI)}:sentiment"])


@pytest.fixture
def templates(tmp_path):
    d = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", d)
    return d


def make(templates, engine=None, **kw):
    settings = ServiceSettings(api_keys=KEYS, templates_dir=str(templates), template_reload_interval_s=0, **kw)
    return create_app(settings, engine=engine or FakeEngine(model_name="fake"))


def client(app, key=ADMIN):
    return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})


def run_concurrently(app, calls, key=ADMIN):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc", headers={"X-API-Key": key}, timeout=30) as c:
            return await asyncio.gather(*(c.post(url, json=body) for url, body in calls))

    return asyncio.run(go())


SENTIMENT = {"input": {"text": "Net interest income rose 8 percent."}}


# --------------------------------------------------------------------------- security


def test_keys_required_and_checked(templates):
    with client(make(templates), key=None) as c:
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 401
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT, headers={"X-API-Key": READER}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_per_key_task_permissions(templates):
    app = make(templates)
    with client(app, SENTI) as c:
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 200
        r = c.post("/v1/tasks/entities", json={"input": {"text": "HSBC opened in Paris."}})
        assert r.status_code == 403 and "teller" in r.json()["detail"]["message"]
        assert [t["name"] for t in c.get("/v1/tasks").json()] == ["sentiment"]
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 403
    with client(app, READER) as c:
        assert c.put("/v1/tasks/sentiment", content="name: sentiment").status_code == 403  # not admin


def test_auth_needs_keys_unless_disabled(templates):
    with pytest.raises(ConfigError, match="API keys are required"):
        create_app(ServiceSettings(templates_dir=str(templates)), engine=FakeEngine())
    app = create_app(ServiceSettings(auth=False, templates_dir=str(templates)), engine=FakeEngine())
    with client(app, key=None) as c:
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 200


def test_key_store_holds_hashes_only(tmp_path, monkeypatch):
    f = tmp_path / "keys.yaml"
    f.write_text(f"keys:\n  - id: alice\n    sha256: {hash_key('alice-secret')}\n    tasks: [sentiment]\n")
    env = json.dumps([{"id": "bob", "sha256": hash_key("bob-secret"), "admin": True}])
    store = KeyStore.load(env, str(f))
    assert store.verify("alice-secret").tasks == ["sentiment"]
    assert store.verify("bob-secret").admin and store.verify("bob-secret").may_run("anything")
    assert store.verify("alice-secretX") is None
    assert "alice-secret" not in json.dumps([e.model_dump() for e in store.entries])
    with pytest.raises(ConfigError, match="SHA-256"):
        KeyStore.load("carol:not-a-hash", None)
    with pytest.raises(ConfigError, match="Duplicate"):
        KeyStore.load(f"x:{hash_key('a')},x:{hash_key('b')}", None)
    # pydantic-settings reads the environment variable
    monkeypatch.setenv("DOMAIN_LM_API_KEYS", f"eve:{hash_key('eve-secret')}")
    assert KeyStore.load(ServiceSettings().api_keys, None).verify("eve-secret").id == "eve"


# --------------------------------------------------------------------------- task endpoints


def test_task_answer_shape_and_schemas(templates):
    with client(make(templates)) as c:
        body = c.post("/v1/tasks/sentiment", json=SENTIMENT).json()
        assert body["output"] == "positive" and body["raw_text"] == "positive"  # fake: first choice
        assert body["model"] == "fake" and body["adapter"] is None and body["version"] == 1
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0
        ent = c.post("/v1/tasks/entities", json={"input": {"text": "HSBC opened in Paris."}}).json()
        assert isinstance(ent["output"], (list, dict))
        desc = c.get("/v1/tasks/sentiment").json()
        assert desc["input_schema"]["required"] == ["text"] and desc["output_schema"]["enum"] == ["positive", "negative", "neutral"]
        assert len(desc["choices"]["zh"]) == 3
        assert c.get("/v1/tasks/nope").status_code == 404


def test_bad_inputs(templates):
    with client(make(templates, max_input_chars=5000)) as c:
        r = c.post("/v1/tasks/nope", json=SENTIMENT)
        assert r.status_code == 404 and r.json()["detail"]["error"] == "unknown_task"
        r = c.post("/v1/tasks/sentiment", json={"input": {}})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "input.text"
        r = c.post("/v1/tasks/sentiment", json={"input": {"text": 42}})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "input.text"
        r = c.post("/v1/tasks/sentiment", json={"input": {"text": "x" * 4001}})  # template max_length
        assert r.status_code == 422 and "4001" in r.json()["detail"]["message"]
        r = c.post("/v1/tasks/report_summary", json={"input": {"text": "x" * 6000}})  # service ceiling
        assert r.status_code == 422 and r.json()["detail"]["field"] == "input.text"
        r = c.post("/v1/tasks/sentiment", json={"input": {"text": "ok"}, "lang": "fr"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "lang"
        r = c.post("/v1/tasks/sentiment", json={"inputs": {"text": "ok"}})  # request model: names the field
        assert r.status_code == 422 and any("input" in e["loc"] for e in r.json()["detail"])


RENDER_BOMB = """
name: fragile
version: 1
description: Renders only when the text is not exactly five characters long.
languages: [en]
metric: classification
inputs:
  text: {type: string, max_length: 100}
output: {kind: label, labels: [approve, reject]}
prompts:
  en:
    variants: ["{{ 10 // ((text | length) - 5) }} {{ text }}"]
examples:
  - {lang: en, inputs: {text: "a longer text"}, output: approve}
"""


def test_render_failure_is_400_and_does_not_disturb_requests_in_flight(templates):
    (templates / "fragile.yaml").write_text(RENDER_BOMB)
    app = make(templates, engine=FakeEngine(delay=0.3))
    calls = [("/v1/tasks/sentiment", SENTIMENT)] * 5 + [("/v1/tasks/fragile", {"input": {"text": "abcde"}})] * 3
    calls += [("/v1/tasks/nope", SENTIMENT), ("/v1/tasks/sentiment", {"input": {"bad": 1}})]
    codes = [r.status_code for r in run_concurrently(app, calls)]
    assert codes == [200] * 5 + [400] * 3 + [404, 422]
    with client(app) as c:
        assert c.post("/v1/tasks/fragile", json={"input": {"text": "fine text"}}).status_code == 200


def test_contract_failure_returns_raw_text(templates):
    engine = FakeEngine(script=lambda req: "maybe?" if req.choices else "{not json")
    with client(make(templates, engine=engine)) as c:
        r = c.post("/v1/tasks/sentiment", json=SENTIMENT)
        assert r.status_code == 502
        assert r.json()["detail"] == {"error": "contract_violation", "message": r.json()["detail"]["message"], "raw_text": "maybe?"}
        r = c.post("/v1/tasks/extraction", json={"input": {"text": "Revenue was 5m.", "field": "revenue"}})
        assert r.status_code == 502 and r.json()["detail"]["raw_text"] == "{not json"
        assert 'domain_lm_contract_failures_total{task="sentiment"} 1.0' in c.get("/metrics").text


def test_batch(templates):
    def script(req):
        return "negative" if "fell" in req.messages[-1]["content"] else "perhaps"

    with client(make(templates, engine=FakeEngine(script=script))) as c:
        r = c.post("/v1/tasks/sentiment:batch", json={"inputs": [{"text": "Profit fell."}, {"text": "Profit rose."}]})
        assert r.status_code == 200
        items = r.json()["items"]
        assert items[0]["result"]["output"] == "negative" and items[0]["error"] is None
        assert items[1]["error"]["error"] == "contract_violation" and items[1]["error"]["raw_text"] == "perhaps"
        r = c.post("/v1/tasks/sentiment:batch", json={"inputs": [{"text": "ok"}, {"txt": "bad"}]})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "inputs.1.txt"


# --------------------------------------------------------------------------- templates at run time


def test_put_versions_persist_and_old_version_stays(templates):
    app = make(templates)
    with client(app) as c:
        t = c.get("/v1/tasks/sentiment").json()
        text = (templates / "sentiment.yaml").read_text().replace(t["description"], "Sentiment, second edition.")
        text = "\n".join(line for line in text.splitlines() if not line.startswith("version:"))
        r = c.put("/v1/tasks/sentiment", content=text, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["versions"] == [1, 2]
        assert (templates / ".versions" / "sentiment@2.yaml").is_file()
        assert c.get("/v1/tasks/sentiment").json()["description"] == "Sentiment, second edition."
        assert c.get("/v1/tasks/sentiment", params={"version": 1}).json()["description"] == t["description"]
        assert c.post("/v1/tasks/sentiment", json={**SENTIMENT, "version": 1}).json()["version"] == 1
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).json()["version"] == 2
        bad = c.put("/v1/tasks/sentiment", content="name: sentiment\ndescription: x\nlanguages: [en]\n")
        assert bad.status_code == 400 and bad.json()["detail"]["error"] == "invalid_template"
        assert c.put("/v1/tasks/other", content=text).status_code == 400  # name mismatch
    # a fresh app (a restart) serves the persisted version
    with client(make(templates)) as c:
        assert c.get("/v1/tasks/sentiment").json()["version"] == 2


def test_changed_template_directory_is_picked_up_without_restart(templates):
    app = make(templates)
    with client(app) as c:
        assert "fragile" not in [t["name"] for t in c.get("/v1/tasks").json()]
        (templates / "fragile.yaml").write_text(RENDER_BOMB)
        assert "fragile" in [t["name"] for t in c.get("/v1/tasks").json()]
        (templates / "broken.yaml").write_text("name: broken\nversion: [\n")
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 200  # a broken file harms nobody
        assert any("broken" in e for e in c.get("/readyz").json()["template_errors"])


# --------------------------------------------------------------------------- limits


def test_100_concurrent_with_queue_limit_10(templates):
    app = make(templates, engine=FakeEngine(delay=0.5), max_queue=10)
    responses = run_concurrently(app, [("/v1/tasks/sentiment", SENTIMENT)] * 100)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 90
    assert all(r.json()["output"] == "positive" for r in responses if r.status_code == 200)
    assert all(r.json()["detail"]["error"] == "queue_full" and r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
    assert app.state.service.admission.in_flight == 0
    with client(app) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 200
        metrics = c.get("/metrics").text
    assert 'domain_lm_rejected_total{reason="queue_full"} 90.0' in metrics
    assert "domain_lm_queue_depth 0.0" in metrics


def test_batch_takes_one_slot_per_item(templates):
    app = make(templates, engine=FakeEngine(delay=0.3), max_queue=3)
    with client(app) as c:
        # More items than the service ever admits: 422 with the limit (not a 429 to retry forever).
        r = c.post("/v1/tasks/sentiment:batch", json={"inputs": [{"text": "a"}] * 4})
        assert r.status_code == 422 and r.json()["detail"]["error"] == "too_large" and r.json()["detail"]["limit"] == 3
        assert c.post("/v1/tasks/sentiment:batch", json={"inputs": [{"text": "a"}] * 3}).status_code == 200
    # Two batches of two on three slots: one runs, the other finds its slots taken (429).
    codes = sorted(r.status_code for r in run_concurrently(app, [("/v1/tasks/sentiment:batch", {"inputs": [{"text": "a"}] * 2})] * 2))
    assert codes == [200, 429] and app.state.service.admission.in_flight == 0


def test_timeout_is_504_and_frees_the_slot(templates):
    app = make(templates, engine=FakeEngine(delay=2.0), request_timeout_s=0.2)
    with client(app) as c:
        r = c.post("/v1/tasks/sentiment", json=SENTIMENT)
        assert r.status_code == 504 and r.json()["detail"]["error"] == "timeout"
    assert app.state.service.admission.in_flight == 0


def test_body_limit(templates):
    with client(make(templates, max_body_bytes=2048)) as c:
        r = c.post("/v1/tasks/sentiment", json={"input": {"text": "x" * 3000}})
        assert r.status_code == 413 and r.json()["detail"]["error"] == "body_too_large"

        def chunks():  # no Content-Length: counted while reading
            yield b'{"input": {"text": "'
            yield b"x" * 3000
            yield b'"}}'

        r = c.post("/v1/tasks/sentiment", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413


# --------------------------------------------------------------------------- health, metrics, logs


def test_readyz_follows_the_engine(templates):
    engine = FakeEngine(ready=False)
    app = make(templates, engine=engine)
    with client(app) as c:
        assert c.get("/readyz").status_code == 503
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 503
        engine.ready = True
        assert c.get("/readyz").json()["status"] == "ready"


def test_metrics_per_task(templates):
    with client(make(templates)) as c:
        c.post("/v1/tasks/sentiment", json=SENTIMENT)
        c.post("/v1/tasks/nope", json=SENTIMENT)
        text = c.get("/metrics").text
    assert 'domain_lm_requests_total{endpoint="/v1/tasks/{name}",status="200",task="sentiment"} 1.0' in text
    assert 'domain_lm_requests_total{endpoint="/v1/tasks/{name}",status="404",task="unknown"} 1.0' in text  # no series per name
    assert 'domain_lm_request_latency_seconds_count{endpoint="/v1/tasks/{name}",task="sentiment"} 1.0' in text
    assert 'domain_lm_tokens_total{kind="completion",task="sentiment"} 1.0' in text


def test_audit_lines_and_masked_json_logs(templates, caplog):
    from services.logs import JsonFormatter

    pii = {"text": "Refund card 4111 1111 1111 1111 to jane.doe@bank.com, call +1 415-555-0100."}
    caplog.set_level(logging.INFO, logger="domain_lm.audit")
    with client(make(templates)) as c:
        c.post("/v1/tasks/sentiment", json={"input": pii})
    rec = [r for r in caplog.records if r.name == "domain_lm.audit"][-1]
    assert (rec.key_id, rec.task, rec.status) == ("ops", "sentiment", 200) and not hasattr(rec, "body")
    caplog.clear()
    with client(make(templates, log_bodies=True)) as c:
        c.post("/v1/tasks/sentiment", json={"input": pii})
    rec = [r for r in caplog.records if r.name == "domain_lm.audit"][-1]
    line = JsonFormatter().format(rec)
    data = json.loads(line)
    assert data["key_id"] == "ops" and data["status"] == 200 and "ts" in data
    assert "4111" not in line and "jane.doe" not in line and "555-0100" not in line
    assert "<CARD_NUMBER>" in data["body"]["text"] and "<EMAIL>" in data["body"]["text"]


def test_no_telemetry_and_offline_are_forced():
    import os

    import services.app  # noqa: F401 - importing the service sets them

    assert all(os.environ[k] == "1" for k in ("HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"))
