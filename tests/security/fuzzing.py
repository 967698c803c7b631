"""A schema-driven fuzz run against a live app, with schemathesis (its command line, its engine).

The real app runs on uvicorn in this process with a ``FakeEngine`` behind it; schemathesis reads the
app's own ``/openapi.json`` and sends generated requests (examples, boundary "coverage" cases,
random valid and invalid data, stateful sequences) for every operation, once with an admin key and
once with a task-scoped key, recording every exchange in a HAR file. Meanwhile a second client
measures ``/healthz``. Used by ``test_fuzz.py`` (a bounded run) and ``bench/fuzz_bench.py`` (full).
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from domain_lm.inference.fake import FakeEngine
from services.app import create_app
from services.security import hash_key
from services.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
KEYS = {"admin": "fuzz-admin-key", "scoped": "fuzz-teller-key"}
ENTRIES = f"ops:{hash_key(KEYS['admin'])}:*:admin,teller:{hash_key(KEYS['scoped'])}:sentiment|chat"


@dataclass
class FuzzReport:
    sent: int = 0
    server_errors: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    healthz_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def healthz_p99_ms(self) -> float:
        if len(self.healthz_ms) < 2:
            return self.healthz_ms[0] if self.healthz_ms else 0.0
        return statistics.quantiles(self.healthz_ms, n=100)[98]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveApp:
    """The real app on uvicorn in a thread (FakeEngine behind it), on a copy of the bundled templates."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fuzz-"))
        shutil.copytree(REPO / "task_templates", self.dir / "task_templates", ignore=shutil.ignore_patterns(".versions"))
        settings_ = ServiceSettings(api_keys=ENTRIES, templates_dir=str(self.dir / "task_templates"), max_queue=32, request_timeout_s=5)
        self.app = create_app(settings_, engine=FakeEngine(model_name="fuzz-lm"))
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveApp":
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the fuzz target did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def _poll_healthz(base: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get("/healthz")
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)


def _schemathesis(base: str, key: str, examples: int, seed: int, har: Path) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(cli),
        "run",
        f"{base}/openapi.json",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error",
        "--no-shrink",
        "--suppress-health-check",
        "all",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "har",
        "--report-har-path",
        str(har),
    ]
    # In the report's directory: schemathesis keeps a cache (.schemathesis/) in its working directory.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=har.parent)


def fuzz(total_requests: int, seed: int = 0, examples: int = 5) -> FuzzReport:
    """Runs of schemathesis (both keys, rising seeds) until at least ``total_requests`` were sent."""
    report = FuzzReport()
    t0 = time.perf_counter()
    with LiveApp() as live, tempfile.TemporaryDirectory() as tmp:
        stop = threading.Event()
        poller = threading.Thread(target=_poll_healthz, args=(live.base, stop, report.healthz_ms), daemon=True)
        poller.start()
        try:
            run = 0
            while report.sent < total_requests:
                for name, key in KEYS.items():
                    har = Path(tmp) / f"{name}-{run}.har"
                    done = _schemathesis(live.base, key, examples, seed + run, har)
                    if not har.is_file():
                        raise RuntimeError(
                            f"schemathesis wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
                        )
                    _count(json.loads(har.read_text())["log"]["entries"], report, name)
                    if done.returncode != 0 and not report.server_errors:  # a failure that is not a 5xx: show it
                        report.server_errors.append(f"schemathesis failed ({name} key):\n{done.stdout[-2000:]}")
                run += 1
        finally:
            stop.set()
            poller.join(10)
    report.seconds = time.perf_counter() - t0
    return report


def _count(entries: list[dict], report: FuzzReport, key_name: str) -> None:
    for e in entries:
        status = int(e["response"]["status"])
        report.sent += 1
        report.statuses[status] += 1
        if status >= 500 or status == 0:  # 0: no response at all (the connection was dropped)
            req = e["request"]
            report.server_errors.append(
                f"[{key_name}] {req['method']} {req['url']} -> {status}: {e['response'].get('content', {}).get('text', '')[:200]}"
            )
