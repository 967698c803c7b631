"""Structured JSON logs with PII masked, and the audit log (one line per call, no bodies by default)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from domain_lm.pii import mask

AUDIT_LOGGER = "domain_lm.audit"
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message and every extra field pass through ``pii.mask``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = _masked(v)
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", audit_file: str | None = None) -> None:
    """Route the root logger (and uvicorn's) through the JSON formatter; audit lines to a file if given."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.setLevel(logging.INFO)
    if audit_file:
        fh = logging.FileHandler(audit_file, encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        audit.handlers[:] = [fh]
        audit.propagate = False


def audit(key_id: str, endpoint: str, task: str | None, status: int, latency_ms: float, body: Any = None) -> None:
    """The audit line: who called what, when, and how it ended. ``body`` only when enabled."""
    extra: dict[str, Any] = {"key_id": key_id, "endpoint": endpoint, "task": task, "status": status, "latency_ms": round(latency_ms, 1)}
    if body is not None:
        extra["body"] = body
    logging.getLogger(AUDIT_LOGGER).info("call", extra=extra)
