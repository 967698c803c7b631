"""Task endpoints: list, describe, answer (one input or a batch), and register templates at run time.

Thin: each route parses its request and calls ``TaskHandler`` (``services.tasks.handler``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from services.deps import ApiKeyDep, CallDep, StateDep
from services.tasks.handler import TaskHandler
from services.tasks.schemas import BatchRequest, BatchResponse, TaskDetail, TaskRegistered, TaskRequest, TaskResponse, TaskSummary

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


def get_handler(state: StateDep) -> TaskHandler:
    return TaskHandler.for_request(state)


HandlerDep = Annotated[TaskHandler, Depends(get_handler)]
Name = Annotated[str, Path(description="A task name (see GET /v1/tasks).", examples=["sentiment"], max_length=128)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "key may not use the task"},
    404: {"description": "unknown task"},
    422: {"description": "invalid input (the field is named), or a batch larger than the service admits"},
    429: {"description": "queue full"},
    502: {"description": "model output broke the contract (raw_text included)"},
    503: {"description": "engine not ready"},
    504: {"description": "timeout"},
}


@router.get("", response_model=list[TaskSummary], summary="List the tasks this key may use")
def list_tasks(handler: HandlerDep, principal: ApiKeyDep) -> list[dict[str, Any]]:
    return handler.list(principal)


@router.get(
    "/{name}", response_model=TaskDetail, summary="A task's input and output schemas", responses={403: _ERRORS[403], 404: _ERRORS[404]}
)
def describe_task(name: Name, handler: HandlerDep, principal: ApiKeyDep, version: int | None = None) -> dict[str, Any]:
    return handler.describe(principal, name, version)


@router.post("/{name}:batch", response_model=BatchResponse, summary="Answer many inputs of one task", responses=_ERRORS)
async def run_batch(name: Name, body: BatchRequest, handler: HandlerDep, call: CallDep) -> BatchResponse:
    return await handler.run_batch(call, name, body)


@router.post("/{name}", response_model=TaskResponse, summary="Answer one input with a typed, contract-checked output", responses=_ERRORS)
async def run_task(name: Name, body: TaskRequest, handler: HandlerDep, call: CallDep) -> TaskResponse:
    return await handler.run(call, name, body)


@router.put(
    "/{name}",
    response_model=TaskRegistered,
    summary="Register a new version of a task (YAML or JSON body; admin key for that task)",
    responses={
        400: {"description": "invalid template (with its line)"},
        403: _ERRORS[403],
        409: {"description": "templates are read-only"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def put_task(name: Name, request: Request, handler: HandlerDep, call: CallDep) -> TaskRegistered:
    return await handler.register(call, name, await request.body())
