"""Error bodies: ``{"detail": {"error", "message", ...}}``, PII-masked, never a server path.

``api_error`` builds one; ``http_error`` is the one place that turns task, engine and timeout
exceptions into HTTP answers, for every feature (tasks, batch items, chat, console dry-runs).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import HTTPException

from domain_lm.inference import EngineError
from domain_lm.pii import mask_value
from domain_lm.tasks import ContractError, InputError, TemplateError, UnknownTaskError


def api_error(status: int, error: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> HTTPException:
    """An HTTP error whose message and extra fields are PII-masked (an error body may echo input)."""
    detail = {"error": error, "message": mask_value(message), **{k: mask_value(v) for k, v in extra.items()}}
    return HTTPException(status_code=status, detail=detail, headers=headers)


def input_field(e: InputError, prefix: str = "input") -> str:
    """The request field an ``InputError`` names: ``input.text``, or ``lang``/``variant`` as they are."""
    return e.field if e.field in ("lang", "variant") else f"{prefix}.{e.field}"


def template_error(e: TemplateError, error: str = "invalid_template", status: int = 400) -> HTTPException:
    """A template problem with its line, but not the server file it came from."""
    return api_error(status, error, e.message, line=e.line)


def http_error(e: BaseException, timeout_s: float) -> HTTPException:
    """Map a task/engine/timeout exception to its HTTP answer; anything unexpected is re-raised (500)."""
    if isinstance(e, HTTPException):
        return e
    if isinstance(e, InputError):
        return api_error(422, "invalid_input", e.message, field=input_field(e))
    if isinstance(e, UnknownTaskError):
        return api_error(404, "unknown_task", str(e))
    if isinstance(e, TemplateError):
        return template_error(e, "render_failed")
    if isinstance(e, ContractError):
        return api_error(502, "contract_violation", e.message, raw_text=e.raw)
    if isinstance(e, EngineError):
        return api_error(400, "engine_rejected", str(e))
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return api_error(504, "timeout", f"no answer within {timeout_s:g}s")
    raise e
