"""FastAPI dependencies as ``Annotated`` aliases, so a route's signature says what it needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from domain_lm.tasks import TemplateRegistry
from services.errors import api_error
from services.handler import Call
from services.security import ANONYMOUS, Principal
from services.state import ServiceState

__all__ = ["AdminDep", "ApiKeyDep", "CallDep", "RegistryDep", "StateDep", "api_error", "require_key"]


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_registry(state: StateDep) -> TemplateRegistry:
    return state.templates()


RegistryDep = Annotated[TemplateRegistry, Depends(get_registry)]


# Declared as OpenAPI security schemes (not parameters), so clients and fuzzers know how to authenticate.
_bearer = HTTPBearer(auto_error=False, description="An API key from `domain-lm serve keygen`, as `Authorization: Bearer KEY`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key in an `X-API-Key` header.")


def require_key(
    request: Request,
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    x_api_key: Annotated[str | None, Depends(_api_key)] = None,
) -> Principal:
    """``Authorization: Bearer KEY`` (what OpenAI clients send) or ``X-API-Key: KEY``."""
    if not state.settings.auth:
        principal = ANONYMOUS
    else:
        key = x_api_key or (bearer.credentials.strip() if bearer is not None else None)
        principal = state.key_store().verify(key) if key else None
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


def get_call(request: Request, principal: ApiKeyDep) -> Call:
    return Call(principal, request.scope)


CallDep = Annotated[Call, Depends(get_call)]
