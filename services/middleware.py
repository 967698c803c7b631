"""ASGI middleware: request id, body limit (413), ``Cache-Control: no-store``, metrics and the audit line.

Handlers note what the audit line and the metrics need in the ASGI scope through ``note_call``
(the task, and the masked body once it passed validation); nothing else is logged.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from fastapi import HTTPException

from services.logs import audit
from services.security import CHAT
from services.state import ServiceState

#: Paths that are polled (probes, scrapes): counted in metrics but not audited.
_QUIET = {"/healthz", "/readyz", "/metrics"}
#: A client's X-Request-ID is kept when it is this tame, else replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Metric label for task names that are not registered (so random names add no series).
UNKNOWN_TASK = "unknown"


def note_call(scope: dict, task: str | None = None, body: Any = None) -> None:
    """Tell the audit line and the metrics which task a call was for, and (if enabled) its body."""
    if task is not None:
        scope["dlm_task"] = task
    if body is not None:
        scope["dlm_body"] = body


def request_id(scope: dict) -> str:
    return scope.get("dlm_request_id", "")


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
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope["dlm_request_id"] = rid

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                out = list(message.get("headers") or [])
                names = {k.lower() for k, _ in out}
                out.append((b"x-request-id", rid.encode()))
                if b"cache-control" not in names:  # answers hold customer data: no proxy or browser keeps them
                    out.append((b"cache-control", b"no-store"))
                message = {**message, "headers": out}
            await send(message)

        try:
            length = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            length = 0
        try:
            if length > limit:
                await _reject(
                    send_wrapper, 413, {"error": "body_too_large", "message": f"request body is {length} bytes; the limit is {limit}"}
                )
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

    def _task_label(self, task: str | None) -> str:
        if not task:
            return ""
        return task if task == CHAT or task in self.state.registry else UNKNOWN_TASK

    def _observe(self, scope: dict, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or ("other" if scope["path"] not in _QUIET else scope["path"])
        task = self._task_label(scope.get("dlm_task"))
        m = self.state.metrics
        m.requests.labels(endpoint, task, str(status)).inc()
        m.latency.labels(endpoint, task).observe(seconds)
        if scope["path"] not in _QUIET:
            client = scope.get("client")
            audit(
                scope.get("dlm_key_id", "none"),
                f"{scope['method']} {endpoint}",
                scope.get("dlm_task"),
                status,
                seconds * 1000,
                scope.get("dlm_body"),
                request_id=scope.get("dlm_request_id"),
                client=client[0] if client else None,
            )


async def _reject(send: Any, status: int, detail: dict) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
