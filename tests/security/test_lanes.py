"""Findings 4, 7 and 9: bounded metrics, one admission mechanism, keys in their lane, no leaks.

Every attack runs against the real app (FakeEngine behind it) with the keys of ``conftest``.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import yaml

from domain_lm.inference.fake import FakeEngine
from services.security import hash_key

from .conftest import ADMIN, ENTRIES, READER, TELLER, client, make_app

SENTIMENT = {"input": {"text": "Net interest income rose."}}


def test_random_task_names_leave_metrics_the_same_size(templates, keys_file):
    app = make_app(templates, keys_file)
    with client(app, TELLER) as c:  # even a key scoped to one task
        c.post("/v1/tasks/x", json=SENTIMENT)
        c.get("/v1/tasks/y")
        c.get("/metrics")  # the first scrape adds its own series
        before = _series(c.get("/metrics").text)
        for _ in range(1_000):  # a label per name would add a thousand series
            c.post(f"/v1/tasks/{uuid.uuid4().hex}", json=SENTIMENT)
        after = c.get("/metrics").text
    assert _series(after) == before  # the same series; only their values grew
    assert 'task="unknown"' in after and "x" not in {
        line.split('task="')[1].split('"')[0] for line in after.splitlines() if 'task="' in line
    }


def _series(text: str) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")]


def test_a_batch_that_can_never_fit_gets_422_with_the_limit(templates, keys_file):
    app = make_app(templates, keys_file, max_queue=16, max_batch_items=64)
    with client(app) as c:
        r = c.post("/v1/tasks/sentiment:batch", json={"inputs": [{"text": "a"}] * 20})
        assert r.status_code == 422 and r.json()["detail"]["limit"] == 16 and "16" in r.json()["detail"]["message"]
        assert c.post("/v1/tasks/sentiment:batch", json={"inputs": [{"text": "a"}] * 16}).status_code == 200
        assert 'domain_lm_rejected_total{reason="never_fits"} 1.0' in c.get("/metrics").text


def test_one_admission_for_tasks_batches_chat_streams_and_dry_runs(templates, keys_file):
    """With one slot held by a slow call, every other kind of model call is refused the same way."""
    app = make_app(templates, keys_file, engine=FakeEngine(delay=0.5), max_queue=1)
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    draft = {"yaml": (templates / "sentiment.yaml").read_text().replace("version: 1\n", ""), "input": {"text": "x"}}
    calls = [
        ("/v1/tasks/sentiment", SENTIMENT),
        ("/v1/tasks/sentiment:batch", {"inputs": [{"text": "a"}]}),
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/console/api/templates/dry-run", draft),
    ]

    async def go():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc", headers={"X-API-Key": ADMIN}, timeout=30
        ) as c:
            app.state.service.checker.warm_up()
            holder = asyncio.create_task(c.post("/v1/tasks/sentiment", json=SENTIMENT))
            await asyncio.sleep(0.15)
            refused = [await c.post(url, json=body) for url, body in calls]
            return await holder, refused

    try:
        held, refused = asyncio.run(go())
    finally:
        app.state.service.close()
    assert held.status_code == 200
    assert [r.status_code for r in refused] == [429] * len(calls), [r.text for r in refused]
    assert all(r.json()["detail"]["error"] == "queue_full" for r in refused)
    assert app.state.service.admission.in_flight == 0


def test_console_runs_respect_task_scope(templates, keys_file, tmp_path, monkeypatch):
    from tests.test_console import make_runs_dir

    monkeypatch.setenv("DOMAIN_LM_RUNS_DIR", str(make_runs_dir(tmp_path / "runs")))
    app = make_app(templates, keys_file)
    with client(app, TELLER) as c:
        detail = c.get("/console/api/runs/demo").json()
        tasks = {row["task"] for table in detail["eval"] for row in table["rows"]}
        assert tasks == {"sentiment"}  # not report_summary
        assert all(s["metrics"] == {} for s in detail["stages"]) and not detail["has_report"]
        assert c.get("/console/api/runs/demo/report").status_code == 403
        assert c.get("/console/api/runs").json()["runs_dir"] == "runs"  # no server path
    with client(app, READER) as c:
        assert c.get("/console/api/runs/demo/report").status_code == 200
        assert {row["task"] for t in c.get("/console/api/runs/demo").json()["eval"] for row in t["rows"]} == {"sentiment", "report_summary"}


def test_revoked_key_stops_working_without_a_restart(templates, keys_file):
    app = make_app(templates, keys_file)
    with client(app, TELLER) as c:
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 200
        keys_file.write_text(yaml.safe_dump({"keys": [e for e in ENTRIES if e["id"] != "teller"]}))
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 401
        keys_file.write_text("keys: [ {broken")  # a broken edit keeps the keys in force, it does not lock everyone out
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        new = "teller-v2-key"
        keys_file.write_text(yaml.safe_dump({"keys": ENTRIES[:1] + [{"id": "teller", "sha256": hash_key(new), "tasks": ["sentiment"]}]}))
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT, headers={"Authorization": f"Bearer {new}"}).status_code == 200
        assert c.post("/v1/tasks/sentiment", json=SENTIMENT).status_code == 401


def test_docs_are_a_setting(templates, keys_file):
    with client(make_app(templates, keys_file, docs=False), key=None) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404 and c.get("/redoc").status_code == 404
    with client(make_app(templates, keys_file), key=None) as c:
        assert c.get("/openapi.json").status_code == 200


def test_no_server_paths_in_probes_or_render_errors(templates, keys_file):
    (templates / "broken.yaml").write_text("name: broken\nversion: [\n")
    (templates / "fragile.yaml").write_text(
        (templates / "sentiment.yaml")
        .read_text()
        .replace("name: sentiment", "name: fragile")
        .replace("{{ text }}", "{{ 10 // ((text | length) - 5) }} {{ text }}")
    )
    app = make_app(templates, keys_file)
    with client(app) as c:
        ready = c.get("/readyz").text
        r = c.post("/v1/tasks/fragile", json={"input": {"text": "abcde"}})
    assert "broken.yaml" in ready and str(templates) not in ready
    assert r.status_code == 400 and r.json()["detail"]["error"] == "render_failed" and str(templates) not in r.text
    from services.app import create_app
    from services.settings import ServiceSettings

    failed = create_app(
        ServiceSettings(api_keys_file=str(keys_file), templates_dir=str(templates), model="/srv/secret/models/x", engine="hf")
    )
    failed.state.service.load_engine()  # fails: the directory does not exist
    body = client(failed).get("/readyz").json()
    assert body["status"] == "not_ready" and "/srv/secret" not in json.dumps(body)


def test_answers_are_not_cached_and_carry_a_request_id(templates, keys_file):
    with client(make_app(templates, keys_file)) as c:
        r = c.post("/v1/tasks/sentiment", json=SENTIMENT, headers={"X-Request-ID": "abc-123"})
        assert r.headers["cache-control"] == "no-store" and r.headers["x-request-id"] == "abc-123"
        assert c.get("/v1/tasks").headers["cache-control"] == "no-store"
        odd = c.get("/v1/tasks", headers={"X-Request-ID": "bad id\twith spaces"})
        assert odd.headers["x-request-id"] != "bad id\twith spaces" and len(odd.headers["x-request-id"]) == 32
        assert c.get("/console/").headers["cache-control"] == "no-cache"  # static pages keep their own policy


def test_audit_line_names_request_id_and_client(templates, keys_file, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="domain_lm.audit")
    with client(make_app(templates, keys_file), TELLER) as c:
        c.post("/v1/tasks/sentiment", json=SENTIMENT, headers={"X-Request-ID": "trace-7"})
    rec = [r for r in caplog.records if r.name == "domain_lm.audit"][-1]
    assert (rec.request_id, rec.key_id, rec.client, rec.status) == ("trace-7", "teller", "testclient", 200)


def test_merged_model_files_are_readable_by_a_service_user(tmp_path, tiny_model_dir):
    """Bundled (and merged) weights get ordinary umask modes, not mkstemp's 0600."""
    import os
    import stat

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from domain_lm.bundle import build_bundle

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    old = os.umask(0o022)
    try:
        info = build_bundle(tmp_path / "b", tpl, model=tmp_path / "adapter")
    finally:
        os.umask(old)
    files = [p for p in info.root.rglob("*") if p.is_file()]
    private = {
        str(p.relative_to(info.root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044
    }
    assert files and not private, private
    assert stat.S_IMODE(info.root.stat().st_mode) & 0o055 == 0o055


def test_a_stream_whose_client_is_gone_before_the_first_byte_gives_its_slot_back(templates, keys_file):
    from services.handler import Call
    from services.openai.handler import ChatHandler
    from services.openai.schemas import ChatCompletionRequest
    from services.security import Principal

    app = make_app(templates, keys_file, max_queue=1)
    state = app.state.service
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], stream=True)

    async def go():
        response = await ChatHandler(state).complete(Call(Principal(id="ops")), body)
        assert state.admission.in_flight == 1  # held while streaming

        async def gone(message):
            raise OSError("client disconnected")

        async def receive():
            return {"type": "http.disconnect"}

        try:
            await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, gone)
        except Exception:  # noqa: BLE001 - starlette reports the disconnect; the slot is what matters
            pass

    asyncio.run(go())
    assert state.admission.in_flight == 0
