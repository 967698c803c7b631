"""`domain-lm serve`: model resolution, keygen, and a real process on the tiny model (HF engine)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from domain_lm.cli import app as cli
from domain_lm.cli.serve import resolve_model
from domain_lm.errors import ModelNotFoundError
from services.security import KeyStore

from .conftest import REPO


def test_resolve_model_dir_adapter_and_run(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == (tiny_model_dir, {})
    adapter = tmp_path / "my-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir), "r": 8}))
    assert resolve_model(str(adapter)) == (tiny_model_dir, {"my-adapter": str(adapter)})
    run = tmp_path / "runs" / "demo"
    (run / "sft" / "model").mkdir(parents=True)
    (run / "sft" / "manifest.json").write_text(json.dumps({"stage": "sft", "artefacts": {"model": "model"}}))
    assert resolve_model(str(run))[0] == run / "sft" / "model"
    assert resolve_model(str(run / "sft"))[0] == run / "sft" / "model"
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "runs"))


def test_keygen_prints_a_key_and_its_hash_only_entry():
    out = CliRunner().invoke(cli, ["serve", "keygen", "--id", "alice", "--tasks", "sentiment,chat"]).output
    key = out.split("key:")[1].split()[0]
    entry = out.split("entry:")[1].strip()
    assert key not in entry
    p = KeyStore.load(entry if entry.startswith("[") else f"[{entry}]", None).verify(key)
    assert p.id == "alice" and p.tasks == ["sentiment", "chat"] and not p.admin


def test_serve_process_answers_and_logs_json(tiny_model_dir, tmp_path):
    templates = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", templates)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    audit = tmp_path / "audit.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "domain_lm",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--templates",
        str(templates),
        "--engine",
        "hf",
        "--no-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--audit-log",
        str(audit),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        r = httpx.post(f"{base}/v1/tasks/sentiment", json={"input": {"text": "Mail me at a.b@bank.com: profits fell."}}, timeout=60)
        assert r.status_code == 200 and r.json()["output"] in {"positive", "negative", "neutral"}
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    calls = [json.loads(line) for line in audit.read_text().splitlines()]
    task_calls = [c for c in calls if c["task"] == "sentiment"]
    assert len(task_calls) == 1 and task_calls[0]["status"] == 200 and task_calls[0]["key_id"] == "anonymous"
    assert "body" not in task_calls[0] and "bank.com" not in audit.read_text()
    json_lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("DISABLED" in x["msg"] for x in json_lines)  # the --no-auth warning, as a JSON log line


def test_domain_lm_never_imports_services_and_finds_serve_through_its_entry_point():
    import ast

    import services.cli
    from domain_lm.cli.serve import COMMAND_GROUP, plugin_command

    offenders = []
    for path in (REPO / "domain_lm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "services" or n.startswith("services.")]
    assert offenders == []
    assert plugin_command("serve") is services.cli.app, f"`serve` is not registered under the {COMMAND_GROUP!r} entry point"
    out = subprocess.run([sys.executable, "-m", "services", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--template-store" in out.stdout, out.stderr
