"""Liveness, readiness and Prometheus metrics.

Probe answers are public, so they name no server paths: template problems are listed by file
name and line, and an engine that failed to load says so without its exception (see the log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.deps import StateDep, require_key

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The engine is loaded and answering")
def readyz(state: StateDep) -> JSONResponse:
    registry = state.registry
    body: dict[str, Any] = {"status": "ready" if state.ready() else "not_ready", "tasks": len(registry)}
    if state.engine is not None:
        body.update(model=state.engine.model_name, adapters=sorted(state.engine.adapters))
    if state.engine_error:
        body["error"] = "the engine failed to load; see the service log"
    if registry.errors:
        body["template_errors"] = [f"{Path(e.file or '?').name}:{e.line or '?'}: {e.message}" for e in registry.errors]
    return JSONResponse(body, status_code=200 if state.ready() else 503)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request, state: StateDep) -> Response:
    if not state.settings.metrics_public:
        auth = request.headers.get("authorization") or ""
        bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=auth[7:]) if auth.lower().startswith("bearer ") else None
        require_key(request, state, bearer, request.headers.get("x-api-key"))
    state.metrics.engine_ready.set(1 if state.ready() else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
