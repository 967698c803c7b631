"""Structured JSON logs with PII masked, and the audit log (one line per call, no bodies by default).

Log records are handed to a queue on the calling thread (a copy, no formatting work) and a
listener thread formats, masks and writes them, so masking never runs on the event loop. Every
string is cut to ``pii.MAX_FIELD_CHARS`` and masked (dict keys and numbers included); the audit file
rotates by size.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

from domain_lm.pii import MAX_FIELD_CHARS, mask, mask_value

AUDIT_LOGGER = "domain_lm.audit"
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: Fields the service fills itself (ids, numbers, addresses): written as they are.
_PLAIN = {"request_id", "key_id", "client", "status", "latency_ms", "endpoint"}
_listeners: list[logging.handlers.QueueListener] = []


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message and every extra field pass through ``pii.mask``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": mask(record.getMessage(), MAX_FIELD_CHARS),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v if k in _PLAIN else mask_value(v)
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info), MAX_FIELD_CHARS)
        return json.dumps(out, ensure_ascii=False, default=str)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands a copy of the record to the listener; the message is rendered, nothing is masked here."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        copy = logging.makeLogRecord(vars(record))
        copy.msg, copy.args = record.getMessage(), None
        if record.exc_info:
            copy.exc_text = logging.Formatter().formatException(record.exc_info)
            copy.msg = f"{copy.msg}\n{copy.exc_text}"
            copy.exc_info = copy.exc_text = None
        return copy


def _queued(*handlers: logging.Handler) -> logging.Handler:
    q: queue.SimpleQueue = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=False)
    listener.start()
    _listeners.append(listener)
    return _Enqueue(q)


def stop_logging() -> None:
    """Flush and stop the listener threads (at exit, or before reconfiguring)."""
    while _listeners:
        _listeners.pop().stop()


atexit.register(stop_logging)


def configure_logging(level: str = "INFO", audit_file: str | None = None, max_bytes: int = 100 * 2**20, backups: int = 10) -> None:
    """Route the root logger (and uvicorn's) through the JSON formatter; audit lines to a rotating file if given."""
    stop_logging()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [_queued(stream)]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    audit_logger = logging.getLogger(AUDIT_LOGGER)
    audit_logger.setLevel(logging.INFO)
    if audit_file:
        fh = logging.handlers.RotatingFileHandler(audit_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        audit_logger.handlers[:] = [_queued(fh)]
        audit_logger.propagate = False


def audit(
    key_id: str,
    endpoint: str,
    task: str | None,
    status: int,
    latency_ms: float,
    body: Any = None,
    request_id: str | None = None,
    client: str | None = None,
) -> None:
    """The audit line: who called what, from where, when, and how it ended. ``body`` only when enabled."""
    extra: dict[str, Any] = {
        "request_id": request_id,
        "key_id": key_id,
        "client": client,
        "endpoint": endpoint,
        "task": task,
        "status": status,
        "latency_ms": round(latency_ms, 1),
    }
    if body is not None:
        extra["body"] = body
    logging.getLogger(AUDIT_LOGGER).info("call", extra=extra)
