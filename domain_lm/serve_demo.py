"""After the pipeline: start the real service on the final model and answer one request per task."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from domain_lm.config import PipelineConfig
from domain_lm.core.progress import console
from domain_lm.errors import DomainLMError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(
    model: Path, templates: str, engine: str, port: int, extra: list[str] | None = None, log_path: Path | None = None,
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "domain_lm", "serve", "--model", str(model), "--templates", templates,
           "--engine", engine, "--host", "127.0.0.1", "--port", str(port), "--no-auth", *(extra or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 600.0, log_path: Path | None = None, probe: str = "/readyz") -> None:
    """Block until ``base + probe`` answers 200; a clear error if the process exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.is_file() else ""
            raise DomainLMError(f"The service exited with code {proc.returncode} before it was ready.\n{tail}")
        try:
            if httpx.get(f"{base}{probe}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise DomainLMError(f"The service did not become ready within {timeout:.0f}s.")


def stop_service(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_requests(templates_dir: str) -> list[tuple[str, str, dict]]:
    """(task, lang, input) for one example per bundled task, from the templates' own examples."""
    from domain_lm.tasks import TemplateRegistry

    reg = TemplateRegistry.load(templates_dir)
    out = []
    for name in reg.names():
        t = reg.get(name)
        ex = t.examples[0] if t.examples else None
        if ex is None:
            continue
        inputs = ex["input"] if isinstance(ex, dict) else ex.input
        lang = (ex.get("lang") if isinstance(ex, dict) else getattr(ex, "lang", None)) or t.languages[0]
        out.append((name, lang, dict(inputs)))
    return out


def serve_and_answer(config: PipelineConfig, model: Path, keep_serving: bool = False, log_path: Path | None = None) -> list[dict]:
    """Start ``domain-lm serve`` on ``model``, send one request per task, print each answer."""
    port = config.serve.port if keep_serving else free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_service(model, config.tasks.templates_dir, config.serve.engine, port, log_path=log_path)
    answers = []
    try:
        with console.status(f"starting the service on {base} ({config.serve.engine} engine) ..."):
            wait_ready(proc, base, log_path=log_path)
        console.print(f"[bold]service[/] ready at {base} (OpenAPI docs at {base}/docs)")
        for task, lang, inputs in demo_requests(config.tasks.templates_dir):
            r = httpx.post(f"{base}/v1/tasks/{task}", json={"input": inputs, "lang": lang}, timeout=300)
            body = r.json()
            answers.append({"task": task, "status": r.status_code, **body})
            shown = json.dumps(body.get("output", body), ensure_ascii=False)
            if len(shown) > 300:
                shown = shown[:300] + "…"
            latency = body.get("latency_ms")
            timing = f"  [dim]({latency:.0f} ms)[/]" if isinstance(latency, (int, float)) else ""
            console.print(f"  [bold cyan]{task}[/] [{lang}] -> {shown}" + timing)
        if keep_serving:
            console.print(f"Serving at {base}; press Ctrl-C to stop.")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_service(proc)
    return answers
