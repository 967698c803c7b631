"""Task endpoints: list, describe, run (one or a batch), and register templates at run time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException, Request

from domain_lm.inference import EngineError
from domain_lm.inference.tasks import TaskAnswer, Usage
from domain_lm.tasks import ContractError, InputError, TaskTemplate, TemplateError, TemplateRegistry, UnknownTaskError
from services.admission import QueueFull
from services.deps import AdminDep, ApiKeyDep, RegistryDep, RunnerDep, StateDep, api_error
from services.schemas import (
    BatchItem,
    BatchItemError,
    BatchRequest,
    BatchResponse,
    TaskDetail,
    TaskRegistered,
    TaskRequest,
    TaskResponse,
    TaskSummary,
)
from services.security import Principal
from services.state import ServiceState

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


# --------------------------------------------------------------------------- helpers


def _template(registry: TemplateRegistry, principal: Principal, name: str, version: int | None = None) -> TaskTemplate:
    # Permission first, so a restricted key cannot probe which tasks exist.
    if not principal.may_run(name):
        raise api_error(403, "forbidden", f"key {principal.id!r} may not use task {name!r}")
    try:
        return registry.get(name, version)
    except UnknownTaskError as e:
        raise api_error(404, "unknown_task", str(e)) from None


def _summary(registry: TemplateRegistry, t: TaskTemplate) -> dict[str, Any]:
    return {
        "name": t.name,
        "version": t.version,
        "versions": sorted(registry.versions(t.name)),
        "description": t.description,
        "languages": list(t.languages),
        "output_kind": t.output.kind,
        "metric": t.metric,
        "adapter": t.adapter,
    }


def _check_sizes(inputs: dict[str, Any], limit: int, where: str = "input") -> None:
    """A global ceiling on input size, whatever a template allows (422 names the field)."""
    for key, value in inputs.items():
        size = len(value) if isinstance(value, (str, list)) else 0
        if isinstance(value, list):
            size = sum(len(v) if isinstance(v, str) else 0 for v in value)
        if size > limit:
            raise api_error(422, "invalid_input", f"input {key!r} is {size} characters; the service accepts at most {limit}", field=f"{where}.{key}")


def _response(answer: TaskAnswer) -> TaskResponse:
    return TaskResponse.model_validate(answer.model_dump())


def _count(state: ServiceState, answer: TaskAnswer) -> None:
    state.metrics.tokens.labels(answer.task, "prompt").inc(answer.usage.prompt_tokens)
    state.metrics.tokens.labels(answer.task, "completion").inc(answer.usage.completion_tokens)


def _map_error(state: ServiceState, task: str, e: Exception) -> HTTPException:
    """The one place that turns task/engine errors into HTTP answers."""
    if isinstance(e, InputError):
        return api_error(422, "invalid_input", e.message, field=f"input.{e.field}" if e.field not in ("lang", "variant") else e.field)
    if isinstance(e, TemplateError):
        return api_error(400, "render_failed", str(e))
    if isinstance(e, ContractError):
        state.metrics.contract_failures.labels(task).inc()
        return api_error(502, "contract_violation", e.message, raw_text=e.raw)
    if isinstance(e, EngineError):
        return api_error(400, "engine_rejected", str(e))
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        state.metrics.rejected.labels("timeout").inc()
        return api_error(504, "timeout", f"no answer within {state.settings.request_timeout_s:g}s")
    raise e


# --------------------------------------------------------------------------- read


@router.get("", response_model=list[TaskSummary], summary="List the tasks this key may use")
def list_tasks(registry: RegistryDep, principal: ApiKeyDep) -> list[dict[str, Any]]:
    return [_summary(registry, t) for t in registry if principal.may_run(t.name)]


@router.get("/{name}", response_model=TaskDetail, summary="A task's input and output schemas")
def describe_task(name: str, registry: RegistryDep, principal: ApiKeyDep, version: int | None = None) -> dict[str, Any]:
    t = _template(registry, principal, name, version)
    out = _summary(registry, t)
    out["version"] = t.version
    out["input_schema"] = t.input_schema()
    out["output_schema"] = t.output_schema()
    out["choices"] = {lang: t.choices(lang) for lang in t.languages} if t.output.kind == "label" else None
    return out


# --------------------------------------------------------------------------- run


@router.post("/{name}:batch", response_model=BatchResponse, summary="Answer many inputs of one task")
async def run_batch(name: str, body: BatchRequest, request: Request, state: StateDep, registry: RegistryDep, runner: RunnerDep, principal: ApiKeyDep) -> BatchResponse:
    request.scope["dlm_task"] = name
    if len(body.inputs) > state.settings.max_batch_items:
        raise api_error(422, "invalid_input", f"a batch holds at most {state.settings.max_batch_items} inputs", field="inputs")
    t = _template(registry, principal, name, body.version)
    for i, x in enumerate(body.inputs):
        _check_sizes(x, state.settings.max_input_chars, where=f"inputs.{i}")
        try:  # validate everything before taking queue slots
            runner.build_request(t, x, body.lang, body.adapter)
        except Exception as e:
            err = _map_error(state, name, e)
            if isinstance(err.detail, dict) and "field" in err.detail:
                err.detail["field"] = f"inputs.{i}." + str(err.detail["field"]).removeprefix("input.")
            raise err from None
    if state.settings.log_bodies:
        request.scope["dlm_body"] = body.inputs
    t0 = time.perf_counter()
    try:
        with state.admission.slot(len(body.inputs)):
            results = await asyncio.wait_for(
                runner.arun_batch(t, body.inputs, body.lang, body.adapter, return_exceptions=True), state.settings.request_timeout_s
            )
    except QueueFull as e:
        state.metrics.rejected.labels("queue_full").inc()
        raise api_error(429, "queue_full", str(e), headers={"Retry-After": "1"}) from None
    except (asyncio.TimeoutError, TimeoutError) as e:
        raise _map_error(state, name, e) from None
    items, usage = [], Usage()
    for i, res in enumerate(results):
        if isinstance(res, TaskAnswer):
            _count(state, res)
            usage = Usage(
                prompt_tokens=usage.prompt_tokens + res.usage.prompt_tokens,
                completion_tokens=usage.completion_tokens + res.usage.completion_tokens,
                total_tokens=usage.total_tokens + res.usage.total_tokens,
            )
            items.append(BatchItem(index=i, result=_response(res)))
        else:
            detail = _map_error(state, name, res).detail
            items.append(BatchItem(index=i, error=BatchItemError(error=detail["error"], message=detail["message"], raw_text=detail.get("raw_text"))))
    return BatchResponse(task=t.name, version=t.version, items=items, usage=usage, latency_ms=(time.perf_counter() - t0) * 1000)


@router.post(
    "/{name}",
    response_model=TaskResponse,
    summary="Answer one input with a typed, contract-checked output",
    responses={
        403: {"description": "key may not use the task"},
        404: {"description": "unknown task"},
        422: {"description": "invalid input (the field is named)"},
        429: {"description": "queue full"},
        502: {"description": "model output broke the contract (raw_text included)"},
        504: {"description": "timeout"},
    },
)
async def run_task(name: str, body: TaskRequest, request: Request, state: StateDep, registry: RegistryDep, runner: RunnerDep, principal: ApiKeyDep) -> TaskResponse:
    request.scope["dlm_task"] = name
    t = _template(registry, principal, name, body.version)
    _check_sizes(body.input, state.settings.max_input_chars)
    if state.settings.log_bodies:
        request.scope["dlm_body"] = body.input
    try:
        gen = runner.build_request(t, body.input, body.lang, body.adapter)  # 422/400 before queueing
        with state.admission.slot():
            t0 = time.perf_counter()
            gen, result = await asyncio.wait_for(runner.agenerate(gen), state.settings.request_timeout_s)
            answer = runner.to_answer(t, gen, result, body.lang, (time.perf_counter() - t0) * 1000)
    except QueueFull as e:
        state.metrics.rejected.labels("queue_full").inc()
        raise api_error(429, "queue_full", str(e), headers={"Retry-After": "1"}) from None
    except Exception as e:
        raise _map_error(state, name, e) from None
    _count(state, answer)
    return _response(answer)


# --------------------------------------------------------------------------- register


@router.put("/{name}", response_model=TaskRegistered, summary="Register a new version of a task (YAML or JSON body)")
async def put_task(name: str, request: Request, state: StateDep, registry: RegistryDep, principal: AdminDep) -> TaskRegistered:  # noqa: ARG001
    request.scope["dlm_task"] = name
    raw = (await request.body()).decode("utf-8", errors="replace")
    try:
        data = yaml.safe_load(raw) if raw.strip() else None  # JSON is YAML too
    except yaml.YAMLError as e:
        raise api_error(400, "invalid_template", f"body is not YAML or JSON: {e}") from None
    if not isinstance(data, dict):
        raise api_error(400, "invalid_template", "body must be a template mapping (YAML or JSON)")
    if data.get("name", name) != name:
        raise api_error(400, "invalid_template", f"template name {data.get('name')!r} does not match the URL's {name!r}")
    source: str | dict[str, Any] = raw if "name" in data else {**data, "name": name}
    try:
        t = registry.register(source, persist_dir=state.templates_dir)
    except TemplateError as e:
        raise api_error(400, "invalid_template", str(e), file=e.file, line=e.line) from None
    except OSError as e:
        raise api_error(500, "not_persisted", f"cannot write to the template directory {state.templates_dir}: {e}") from None
    return TaskRegistered(name=t.name, version=t.version, versions=sorted(registry.versions(t.name)), persisted=True)
