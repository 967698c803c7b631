"""The attacker's view: the real app (FakeEngine behind it), keys in every lane, helpers to time calls."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from domain_lm.inference.fake import FakeEngine
from services.app import create_app
from services.security import hash_key
from services.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]

#: Keys: an admin for every task, an admin for sentiment only, a reader, a teller scoped to sentiment.
ADMIN, SENTI_ADMIN, READER, TELLER = "sec-admin-1", "sec-senti-admin-2", "sec-reader-3", "sec-teller-4"
ENTRIES = [
    {"id": "ops", "sha256": hash_key(ADMIN), "tasks": ["*"], "admin": True},
    {"id": "senti-owner", "sha256": hash_key(SENTI_ADMIN), "tasks": ["sentiment"], "admin": True},
    {"id": "analyst", "sha256": hash_key(READER), "tasks": ["*"], "admin": False},
    {"id": "teller", "sha256": hash_key(TELLER), "tasks": ["sentiment"], "admin": False},
]


@pytest.fixture
def templates(tmp_path) -> Path:
    d = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", d, ignore=shutil.ignore_patterns(".versions"))
    return d


@pytest.fixture
def keys_file(tmp_path) -> Path:
    import yaml

    f = tmp_path / "api-keys.yaml"
    f.write_text(yaml.safe_dump({"keys": ENTRIES}))
    return f


def make_app(templates: Path, keys_file: Path, engine=None, **kw):
    settings = ServiceSettings(
        api_keys_file=str(keys_file), templates_dir=str(templates), template_reload_interval_s=0, keys_reload_interval_s=0, **kw
    )
    return create_app(settings, engine=engine or FakeEngine(model_name="fake"))


def client(app, key: str | None = ADMIN) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})


async def timed(c: httpx.AsyncClient, method: str, url: str, **kw) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = await c.request(method, url, **kw)
    return r, time.perf_counter() - t0


async def while_polling_healthz(app, coro_factory, key: str = ADMIN) -> tuple[object, list[float]]:
    """Run ``coro_factory(client)`` while /healthz is polled every 5 ms; return its result and the probe latencies."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc", headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        done = asyncio.Event()
        latencies: list[float] = []

        async def poll() -> None:
            while not done.is_set():
                _, dt = await timed(c, "GET", "/healthz")
                latencies.append(dt)
                await asyncio.sleep(0.005)

        poller = asyncio.create_task(poll())
        try:
            result = await coro_factory(c)
        finally:
            done.set()
            await poller
        return result, latencies
