"""ASGI middleware: request body limit (413), and per-call metrics plus the audit line."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import HTTPException

from services.logs import audit
from services.state import ServiceState

#: Paths that are polled (probes, scrapes): counted in metrics but not audited.
_QUIET = {"/healthz", "/readyz", "/metrics"}


class ObserveMiddleware:
    def __init__(self, app: Any, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.settings.max_body_bytes
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            length = int(dict(scope.get("headers") or []).get(b"content-length", b"0") or 0)
        except ValueError:
            length = 0
        try:
            if length > limit:
                await _reject(send_wrapper, 413, {"error": "body_too_large", "message": f"request body is {length} bytes; the limit is {limit}"})
                return
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:  # chunked bodies without a Content-Length
                        raise HTTPException(413, {"error": "body_too_large", "message": f"request body exceeds {limit} bytes"})
                return message

            await self.app(scope, limited_receive, send_wrapper)
        finally:
            self._observe(scope, status["code"], time.perf_counter() - t0)

    def _observe(self, scope: dict, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or ("other" if scope["path"] not in _QUIET else scope["path"])
        task = scope.get("dlm_task") or ""
        m = self.state.metrics
        m.requests.labels(endpoint, task, str(status)).inc()
        m.latency.labels(endpoint, task).observe(seconds)
        if scope["path"] not in _QUIET:
            audit(scope.get("dlm_key_id", "none"), f"{scope['method']} {endpoint}", task or None, status, seconds * 1000, scope.get("dlm_body"))


async def _reject(send: Any, status: int, detail: dict) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
