"""The console: static pages at ``/console/`` and the JSON endpoints only the console needs.

Pages and assets are public (they hold no data); every ``/console/api/*`` call goes through the
REST API's own key check (``ApiKeyDep``), and editor calls that could change or probe templates
need an admin key, as ``PUT /v1/tasks/{name}`` does. Running and saving a task use the REST API
itself (``POST``/``PUT /v1/tasks/{name}``), so the console shows exactly what clients get.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from domain_lm.tasks import UnknownTaskError
from services.console import editor, runs
from services.console.handler import ConsoleHandler
from services.deps import AdminDep, ApiKeyDep, CallDep, RegistryDep, StateDep, api_error
from services.state import ServiceState
from services.tasks.handler import TaskHandler

STATIC = Path(__file__).parent / "static"
#: Security headers for the pages: nothing may load from outside the service (air-gapped anyway).
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'"
)

router = APIRouter(prefix="/console", tags=["console"])


def get_handler(state: StateDep) -> ConsoleHandler:
    return ConsoleHandler.for_request(state)


HandlerDep = Annotated[ConsoleHandler, Depends(get_handler)]


def runs_dir(state: ServiceState) -> Path:
    """``runs_dir`` from the service settings when it has one, else ``DOMAIN_LM_RUNS_DIR``, else ``runs``."""
    return Path(getattr(state.settings, "runs_dir", None) or os.environ.get("DOMAIN_LM_RUNS_DIR") or "runs")


# --------------------------------------------------------------------------- pages (public)


@router.get("", include_in_schema=False)
def console_root(request: Request) -> RedirectResponse:
    # Relative asset URLs in index.html need the trailing slash.
    return RedirectResponse(str(request.url.path) + "/")


@router.get("/", include_in_schema=False)
def console_index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})


@router.get("/static/{path:path}", include_in_schema=False)
def console_static(path: str) -> FileResponse:
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC.resolve()) or not target.is_file():
        raise api_error(404, "not_found", f"no console asset {path!r}")
    return FileResponse(target, headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- session and tasks


@router.get("/api/session", summary="Who the key belongs to and what it may do")
def session(principal: ApiKeyDep, state: StateDep) -> dict[str, Any]:
    engine = state.engine
    return {
        "key_id": principal.id,
        "admin": principal.admin,
        "tasks": principal.tasks,
        "model": engine.model_name if engine is not None else None,
        "ready": state.ready(),
    }


@router.get("/api/tasks", summary="Every task this key may use, with schemas, examples and what serves it")
def tasks(registry: RegistryDep, principal: ApiKeyDep, state: StateDep) -> dict[str, Any]:
    items = [{**editor.summary(t, registry), "serving": serving(state, t)} for t in registry if principal.may_run(t.name)]
    # Broken files are only an admin's business, named by file name (not the server's directory).
    problems = (
        [{"file": Path(e.file or "?").name, "line": e.line, "message": e.message} for e in registry.errors] if principal.admin else []
    )
    return {"tasks": items, "problems": problems}


def serving(state: ServiceState, t: Any) -> dict[str, Any] | None:
    """What answers the task now and why (None while the engine loads)."""
    return state.taught.summary(t, state.engine.adapters) if state.engine is not None else None


@router.get("/api/tasks/{name}", summary="One task's schemas, examples, version history and what serves it")
def task(name: str, registry: RegistryDep, principal: ApiKeyDep, state: StateDep) -> dict[str, Any]:
    if not principal.may_run(name):
        raise api_error(403, "forbidden", f"key {principal.id!r} may not use task {name!r}")
    try:
        t = registry.get(name)
    except UnknownTaskError as e:
        raise api_error(404, "unknown_task", str(e)) from None
    out = editor.summary(t, registry)
    out["serving"] = serving(state, t)
    out["engine"] = t.engine
    out["few_shot"] = t.few_shot.k if t.few_shot else None
    out["history"] = [
        {"version": v, "description": registry.get(name, v).description, "current": v == t.version}
        for v in sorted(registry.versions(name), reverse=True)
    ]
    return out


@router.get("/api/tasks/{name}/versions/{version}/source", summary="A version's YAML, as the editor loads it")
def task_source(name: str, version: int, registry: RegistryDep, principal: AdminDep) -> dict[str, Any]:
    if not principal.may_change(name):
        raise api_error(403, "forbidden", f"key {principal.id!r} may not change task {name!r}")
    try:
        t = registry.get(name, version)
    except UnknownTaskError as e:
        raise api_error(404, "unknown_task", str(e)) from None
    return {"name": name, "version": version, "yaml": t.to_yaml(), "draft": editor.as_draft(t)}


# --------------------------------------------------------------------------- template editor


class DraftBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    yaml: str = Field(max_length=200_000)


class DryRunBody(DraftBody):
    lang: str = Field("en", max_length=16)
    variant: int = Field(0, ge=0)
    input: dict[str, Any] | None = Field(None, description="One input to answer; default: the draft's own examples.")


@router.get("/api/templates/starter", summary="A new task to start from")
def starter(principal: AdminDep) -> dict[str, str]:  # noqa: ARG001
    return {"yaml": editor.STARTER}


@router.post("/api/templates/check", summary="Validate a draft template (errors carry their line)")
async def check(body: DraftBody, handler: HandlerDep, principal: AdminDep) -> dict[str, Any]:  # noqa: ARG001
    return await handler.check(body.yaml)


@router.post("/api/templates/dry-run", summary="Render and answer a draft on example inputs without saving it")
async def dry_run(body: DryRunBody, handler: HandlerDep, principal: AdminDep) -> dict[str, Any]:  # noqa: ARG001
    return await handler.dry_run(body.yaml, body.lang, body.input, body.variant)


# --------------------------------------------------------------------------- teaching


class ServeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice: Literal["auto", "adapter", "few_shot", "zero_shot", "classical"]
    version: int | None = Field(None, ge=1, description="adapter: serve this task-store version's adapter (default: the current one).")
    k: int | None = Field(None, ge=1, le=16, description="few_shot: examples per prompt (default: the template's, else 4).")


@router.post("/api/tasks/{name}/serve", summary="Choose what answers a task: registers a template version with that choice")
async def choose_serving(name: str, body: ServeBody, state: StateDep, call: CallDep) -> dict[str, Any]:
    return await TaskHandler.for_request(state).choose(call, name, body.choice, body.version, body.k)


# --------------------------------------------------------------------------- runs and evaluation


@router.get("/api/runs", summary="Pipeline runs in the service's runs directory")
def list_runs(state: StateDep, principal: ApiKeyDep) -> dict[str, Any]:
    root = runs_dir(state)
    listed = runs.list_runs(root)
    if not principal.all_tasks:  # the full report covers every task
        listed = [{**r, "has_report": False} for r in listed]
    return {"runs_dir": str(root) if principal.all_tasks else root.name, "runs": listed}


@router.get("/api/runs/{name}", summary="A run's stages, metrics and evaluation tables (a scoped key sees its tasks)")
def run_detail(name: str, state: StateDep, principal: ApiKeyDep) -> dict[str, Any]:
    try:
        return ConsoleHandler.scoped_detail(runs.run_detail(runs_dir(state), name), principal)
    except runs.RunNotFound as e:
        raise api_error(404, "unknown_run", str(e)) from None


@router.get("/api/runs/{name}/report", response_class=HTMLResponse, summary="A run's self-contained report.html (keys for all tasks)")
def run_report(name: str, state: StateDep, principal: ApiKeyDep) -> HTMLResponse:
    path = ConsoleHandler.report(runs_dir(state), name, principal)
    # The page shows it in a sandboxed iframe (no scripts); the CSP says the same to any browser.
    return HTMLResponse(
        path.read_text(encoding="utf-8"),
        headers={"Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"},
    )
