"""FastAPI dependencies as ``Annotated`` aliases, so a route's signature says what it needs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from domain_lm.inference import Engine
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import TemplateRegistry
from services.security import ANONYMOUS, Principal
from services.state import ServiceState


def api_error(status: int, error: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> HTTPException:
    return HTTPException(status_code=status, detail={"error": error, "message": message, **extra}, headers=headers)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_engine(state: StateDep) -> Engine:
    if not state.ready():
        msg = f"the engine failed to load: {state.engine_error}" if state.engine_error else "the engine is still loading"
        raise api_error(503, "not_ready", msg)
    assert state.engine is not None
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_runner(state: StateDep, engine: EngineDep) -> TaskRunner:  # noqa: ARG001 - engine: readiness check
    assert state.runner is not None
    return state.runner


RunnerDep = Annotated[TaskRunner, Depends(get_runner)]


def get_registry(state: StateDep) -> TemplateRegistry:
    return state.templates()


RegistryDep = Annotated[TemplateRegistry, Depends(get_registry)]


def require_key(
    request: Request,
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """``Authorization: Bearer KEY`` (what OpenAI clients send) or ``X-API-Key: KEY``."""
    if not state.settings.auth:
        principal = ANONYMOUS
    else:
        key = x_api_key
        if key is None and authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        principal = state.keys.verify(key) if key else None
        if principal is None:
            request.scope["dlm_key_id"] = "invalid" if key else "none"
            raise HTTPException(
                status_code=401,
                detail={"error": "unauthorized", "message": "missing or invalid API key"},
                headers={"WWW-Authenticate": "Bearer"},
            )
    request.scope["dlm_key_id"] = principal.id
    return principal


ApiKeyDep = Annotated[Principal, Depends(require_key)]


def require_admin(principal: ApiKeyDep) -> Principal:
    if not principal.admin:
        raise api_error(403, "forbidden", f"key {principal.id!r} may not change templates (needs admin)")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
