"""Task endpoints: list, describe, answer (one input or a batch), and register templates at run time.

Thin: each route parses its request and calls ``TaskHandler`` (``services.tasks.handler``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from services.deps import ApiKeyDep, CallDep, StateDep
from services.tasks.examples import ExamplesHandler, upload_format, upload_mapping
from services.tasks.handler import TaskHandler
from services.tasks.schemas import (
    BatchRequest,
    BatchResponse,
    ExamplesAccepted,
    TaskDetail,
    TaskRegistered,
    TaskRequest,
    TaskResponse,
    TaskSummary,
)

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


@router.post(
    "/{name}/examples",
    response_model=ExamplesAccepted,
    status_code=202,
    summary="Teach a task from labelled examples (JSONL, JSON or CSV body): queues a job that trains its adapter",
    responses={
        403: {"description": "key may not change the task (an admin key for it is needed)"},
        404: _ERRORS[404],
        409: {"description": "teaching is off, or a job of this task is already queued or running"},
        413: {"description": "body or row count over the limit"},
        422: {"description": "the file does not parse, rows do not fit the template (listed), or too few examples"},
        429: {"description": "the job queue is full"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/jsonl": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            },
        }
    },
)
async def upload_examples(
    name: Name,
    request: Request,
    state: StateDep,
    call: CallDep,
    fmt: Annotated[Literal["jsonl", "csv", "json"] | None, Query(alias="format", description="Default: from Content-Type.")] = None,
    label_field: Annotated[str, Query(max_length=128, description="Column holding the label (answer).")] = "label",
    fields: Annotated[str | None, Query(max_length=4096, description="JSON object: template input -> column.")] = None,
    label_map: Annotated[str | None, Query(max_length=65536, description="JSON object: value in the file -> label.")] = None,
    group_field: Annotated[str | None, Query(max_length=128, description="Column naming each row's document.")] = None,
    lang: Annotated[str, Query(max_length=16)] = "en",
    skip_invalid: Annotated[bool, Query(description="Leave invalid rows out instead of refusing the file.")] = False,
    adapter: Annotated[bool, Query(description="Train a LoRA adapter (false: few-shot pool and classical model only).")] = True,
) -> ExamplesAccepted:
    handler = ExamplesHandler.for_request(state)
    mapping = upload_mapping(name, fields, label_field, label_map, group_field, lang)
    data = await request.body()
    return await handler.upload(call, name, data, upload_format(fmt, request.headers.get("content-type")), mapping, skip_invalid, adapter)


@router.get("/{name}/training", summary="A task's taught versions: held-out scores of each system, and what serves it, and why")
def training(name: Name, handler: HandlerDep, principal: ApiKeyDep) -> dict[str, Any]:
    return handler.training(principal, name)
