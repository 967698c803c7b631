"""Console JSON endpoints and pages through TestClient with the scripted fake engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from domain_lm.inference.fake import FakeEngine
from domain_lm.pipeline.store import Run
from services.app import create_app
from services.console import editor
from services.security import hash_key
from services.settings import ServiceSettings

from .conftest import REPO

ADMIN, READER, SENTI = "console-admin-1", "console-reader-2", "console-senti-3"
KEYS = ",".join([f"ops:{hash_key(ADMIN)}:*:admin", f"analyst:{hash_key(READER)}:*", f"teller:{hash_key(SENTI)}:sentiment"])

#: A second task written in the editor: a label task with English and Chinese.
NEW_TASK = """\
name: card_dispute
description: Decide whether a card transaction complaint is a fraud claim or a billing error.
languages: [en, zh]
metric: classification
inputs:
  text: {type: string, max_length: 1000, description: The customer's complaint.}
output:
  kind: label
  labels: [fraud, billing_error]
  display:
    zh: {fraud: 欺诈, billing_error: 账单错误}
prompts:
  en:
    system: Answer fraud or billing_error.
    variants: ["Is this complaint a fraud claim or a billing error? {{ text }}"]
  zh:
    variants: ["这条投诉是欺诈还是账单错误？{{ text }}"]
examples:
  - {lang: en, inputs: {text: "I never made this purchase in Lisbon."}, output: fraud}
  - {lang: en, inputs: {text: "I was charged twice for the same hotel night."}, output: billing_error}
  - {lang: zh, inputs: {text: "我从未在里斯本消费过这笔钱。"}, output: fraud}
"""


def make_runs_dir(root: Path) -> Path:
    """A run with a finished SFT stage, an eval stage holding a comparison report, and report.html."""
    from domain_lm.eval.report import write_report as write_eval_report
    from domain_lm.pipeline.report import write_report

    run = Run(root / "demo")
    with run.writing("sft") as w:
        w.result.metrics = {"train_loss": 1.25, "steps": 4}
    with run.writing("eval") as w:
        report = {
            "tasks": {
                "sentiment": {
                    "metric": "classification",
                    "lang": "en",
                    "systems": {
                        "base": {"weighted_f1": 0.41, "accuracy": 0.5, "macro_f1": 0.4, "n": 10, "invalid": 0},
                        "sft": {"weighted_f1": 0.77, "accuracy": 0.8, "macro_f1": 0.7, "n": 10, "invalid": 1},
                    },
                },
                "report_summary": {
                    "metric": "rouge",
                    "lang": "en",
                    "systems": {"base": {"rougeL": 0.12, "n": 5}, "sft": {"skipped": "no model"}},
                },
            }
        }
        paths = write_eval_report(report, w.path)
        w.add_artefact("report", paths["json"].name)
    write_report(run)
    return root


@pytest.fixture
def templates(tmp_path):
    d = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", d)
    return d


@pytest.fixture
def app(templates, tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAIN_LM_RUNS_DIR", str(make_runs_dir(tmp_path / "runs")))
    settings = ServiceSettings(api_keys=KEYS, templates_dir=str(templates), template_reload_interval_s=0)
    return create_app(settings, engine=FakeEngine(model_name="fake-bank-lm"))


def client(app, key=ADMIN):
    return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})


# --------------------------------------------------------------------------- pages and auth


def test_pages_are_public_and_self_contained(app):
    with client(app, key=None) as c:
        r = c.get("/console", follow_redirects=False)
        assert r.status_code in (307, 308) and r.headers["location"].endswith("/console/")
        page = c.get("/console/")
        assert page.status_code == 200 and "static/app.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("app.js", "console.css"):
            body = c.get(f"/console/static/{asset}").text
            assert "http://" not in body and "https://" not in body  # air-gapped: no CDN, no fonts
        assert c.get("/console/static/../router.py").status_code == 404
        assert c.get("/console/static/%2e%2e/router.py").status_code == 404


def test_every_data_call_needs_a_key(app):
    paths = [
        "/console/api/session",
        "/console/api/tasks",
        "/console/api/tasks/sentiment",
        "/console/api/runs",
        "/console/api/runs/demo",
        "/console/api/runs/demo/report",
    ]
    with client(app, key=None) as c:
        for p in paths:
            assert c.get(p).status_code == 401, p
        assert c.post("/console/api/templates/check", json={"yaml": NEW_TASK}).status_code == 401
    with client(app, key="wrong") as c:
        assert c.get("/console/api/tasks").status_code == 401
    with client(app, key=READER) as c:
        assert c.get("/console/api/session").json() == {
            "key_id": "analyst",
            "admin": False,
            "tasks": ["*"],
            "model": "fake-bank-lm",
            "ready": True,
        }
        # the editor is for keys that may change templates, as PUT /v1/tasks is
        assert c.post("/console/api/templates/check", json={"yaml": NEW_TASK}).status_code == 403
        assert c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK}).status_code == 403
        assert c.get("/console/api/tasks/sentiment/versions/1/source").status_code == 403
    with client(app, key=SENTI) as c:
        assert [t["name"] for t in c.get("/console/api/tasks").json()["tasks"]] == ["sentiment"]
        assert c.get("/console/api/tasks/entities").status_code == 403


def test_task_list_has_schemas_and_examples(app):
    with client(app) as c:
        data = c.get("/console/api/tasks").json()
    tasks = {t["name"]: t for t in data["tasks"]}
    assert {"sentiment", "entities", "extraction", "report_summary", "key_points", "business_line"} <= set(tasks)
    s = tasks["sentiment"]
    assert s["output"]["kind"] == "label" and s["output"]["labels"] == ["positive", "negative", "neutral"]
    assert s["input_schema"]["properties"]["text"]["maxLength"] == 4000
    assert s["inputs"]["text"]["type"] == "string" and s["inputs"]["text"]["required"] is True
    assert {ex["lang"] for ex in s["examples"]} == {"en", "zh"}
    assert tasks["entities"]["output"]["kind"] == "json" and tasks["entities"]["output"]["schema"]["type"] in ("object", "array")


# --------------------------------------------------------------------------- editor


def test_check_reports_errors_with_lines(app):
    with client(app) as c:
        ok = c.post("/console/api/templates/check", json={"yaml": NEW_TASK}).json()
        assert ok["ok"] and ok["template"]["name"] == "card_dispute" and ok["template"]["version"] == 1
        assert ok["template"]["current_version"] is None

        broken = NEW_TASK.replace("  kind: label", "  kind: lable")
        res = c.post("/console/api/templates/check", json={"yaml": broken}).json()
        assert not res["ok"] and res["template"] is None
        assert res["errors"][0]["line"] == broken.splitlines().index("  kind: lable") + 1
        assert "kind" in res["errors"][0]["message"]

        syntax = NEW_TASK.replace("languages: [en, zh]", "languages: [en, zh")
        err = c.post("/console/api/templates/check", json={"yaml": syntax}).json()["errors"][0]
        assert "YAML syntax error" in err["message"] and err["line"] is not None

        undefined = NEW_TASK.replace("{{ text }}", "{{ txet }}", 1)
        res = c.post("/console/api/templates/check", json={"yaml": undefined}).json()
        assert not res["ok"] and "txet" in res["errors"][0]["message"]


def test_check_applies_the_registry_version_rule(app, templates):
    with client(app) as c:
        current = (templates / "sentiment.yaml").read_text()
        res = c.post("/console/api/templates/check", json={"yaml": current}).json()
        assert not res["ok"] and "already at version 1" in res["errors"][0]["message"]
        assert res["errors"][0]["line"] == current.splitlines().index("version: 1") + 1
        src = c.get("/console/api/tasks/sentiment/versions/1/source").json()
        assert "version:" not in src["draft"] and "version: 1" in src["yaml"]
        res = c.post("/console/api/templates/check", json={"yaml": src["draft"]}).json()
        assert res["ok"] and res["template"]["version"] == 2 and res["template"]["current_version"] == 1
        assert res["unchanged"] is True  # the editor will not offer to save an identical copy
        edited = src["draft"].replace("Classify the sentiment", "Classify the tone")
        assert c.post("/console/api/templates/check", json={"yaml": edited}).json()["unchanged"] is False


def test_dry_run_answers_examples_and_saves_nothing(app, templates):
    with client(app) as c:
        res = c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK, "lang": "en"}).json()
        assert res["ok"] and res["engine"] is True and len(res["items"]) == 2
        first = res["items"][0]
        assert first["inputs"] == {"text": "I never made this purchase in Lisbon."} and first["expected"] == "fraud"
        assert (
            first["messages"][-1]["content"] == "Is this complaint a fraud claim or a billing error? I never made this purchase in Lisbon."
        )
        assert first["answer"]["output"] == "fraud" and first["answer"]["raw_text"] == "fraud"  # fake engine: first choice
        assert first["error"] is None

        zh = c.post(
            "/console/api/templates/dry-run", json={"yaml": NEW_TASK, "lang": "zh", "input": {"text": "同一笔消费被扣了两次款"}}
        ).json()
        assert zh["items"][0]["answer"]["raw_text"] == "欺诈" and zh["items"][0]["answer"]["output"] == "fraud"

        bad_input = c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK, "input": {"txt": "x"}}).json()
        assert bad_input["items"][0]["error"]["kind"] == "input" and bad_input["items"][0]["answer"] is None

        no_lang = c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK, "lang": "fr"}).json()
        assert not no_lang["ok"] and "fr" in no_lang["errors"][0]["message"]

        assert c.get("/console/api/tasks/card_dispute").status_code == 404
        assert "card_dispute" not in [t["name"] for t in c.get("/v1/tasks").json()]
    assert not (templates / "card_dispute.yaml").exists()


def test_saved_through_rest_api_shows_history(app, templates):
    with client(app) as c:
        assert c.put("/v1/tasks/card_dispute", content=NEW_TASK, headers={"Content-Type": "application/yaml"}).status_code == 200
        v2 = NEW_TASK.replace("description: Decide", "description: Second edition. Decide")
        assert c.put("/v1/tasks/card_dispute", content=v2, headers={"Content-Type": "application/yaml"}).json()["version"] == 2
        t = c.get("/console/api/tasks/card_dispute").json()
        assert t["version"] == 2 and [h["version"] for h in t["history"]] == [2, 1]
        assert [h["current"] for h in t["history"]] == [True, False]
        assert t["history"][1]["description"].startswith("Decide")
        assert "Decide" in c.get("/console/api/tasks/card_dispute/versions/1/source").json()["draft"]
    assert (templates / ".versions" / "card_dispute@1.yaml").is_file()


def test_starter_template_is_valid(app):
    with client(app) as c:
        text = c.get("/console/api/templates/starter").json()["yaml"]
        res = c.post("/console/api/templates/check", json={"yaml": text}).json()
    assert res["ok"], res["errors"]
    assert text == editor.STARTER


# --------------------------------------------------------------------------- runs


def test_runs_list_detail_report(app):
    with client(app) as c:
        data = c.get("/console/api/runs").json()
        assert [r["name"] for r in data["runs"]] == ["demo"]
        run = data["runs"][0]
        assert run["stages"] == ["sft", "eval"] and run["has_report"] and run["has_eval"]

        detail = c.get("/console/api/runs/demo").json()
        assert [s["stage"] for s in detail["stages"]] == ["sft", "eval"]
        assert detail["stages"][0]["metrics"] == {"train_loss": 1.25, "steps": 4}
        (table,) = detail["eval"]
        assert table["file"] == "eval/report.json" and table["systems"] == ["base", "sft"]
        rows = {r["task"]: r for r in table["rows"]}
        assert rows["sentiment"]["headline"] == "weighted_f1"
        assert rows["sentiment"]["scores"]["sft"] == {"score": 0.77, "n": 10, "invalid": 1, "latency_ms": None}
        assert rows["report_summary"]["scores"]["base"]["score"] == 0.12
        assert rows["report_summary"]["scores"]["sft"] == {"skipped": "no model"}

        report = c.get("/console/api/runs/demo/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert "sandbox" in report.headers["content-security-policy"] and "<html" in report.text.lower()

        assert c.get("/console/api/runs/nope").status_code == 404
        assert c.get("/console/api/runs/..").status_code == 404
        assert c.get("/console/api/runs/.work").status_code == 404


def test_runs_dir_missing_is_empty(app, tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAIN_LM_RUNS_DIR", str(tmp_path / "nowhere"))
    with client(app) as c:
        data = c.get("/console/api/runs").json()
    assert data == {"runs_dir": str(tmp_path / "nowhere"), "runs": []}


def test_no_auth_mode_session_needs_no_key(templates):
    app = create_app(ServiceSettings(auth=False, templates_dir=str(templates)), engine=FakeEngine(model_name="dev-lm"))
    with client(app, key=None) as c:
        assert c.get("/console/api/session").json() == {
            "key_id": "anonymous",
            "admin": True,
            "tasks": ["*"],
            "model": "dev-lm",
            "ready": True,
        }
        assert c.post("/console/api/templates/check", json={"yaml": NEW_TASK}).json()["ok"]


def test_dry_run_takes_queue_slots_and_obeys_the_timeout(templates):
    settings = ServiceSettings(api_keys=KEYS, templates_dir=str(templates), max_queue=1, request_timeout_s=0.5)
    app = create_app(settings, engine=FakeEngine(model_name="fake", delay=0.05))
    with client(app) as c:
        # two examples need two slots, more than a queue of one ever admits: 422 with the limit
        r = c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK, "lang": "en"})
        assert r.status_code == 422 and r.json()["detail"]["error"] == "too_large" and r.json()["detail"]["limit"] == 1
        one = c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK, "lang": "en", "input": {"text": "x"}})
        assert one.status_code == 200 and one.json()["items"][0]["answer"]["output"] == "fraud"
    slow = create_app(settings, engine=FakeEngine(model_name="fake", delay=2.0))
    with client(slow) as c:
        r = c.post("/console/api/templates/dry-run", json={"yaml": NEW_TASK, "lang": "en", "input": {"text": "x"}})
        assert r.status_code == 504
        assert slow.state.service.admission.in_flight == 0  # the slot was given back
