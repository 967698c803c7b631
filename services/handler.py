"""What every feature's handler shares: one way to use the model (admission, timeout, error mapping).

A router is thin: it parses the request and calls its handler. A handler owns validation, then
runs the model call inside ``guarded(n)``: ``n`` admission slots (429 when they are taken, 422 when
``n`` can never fit), the request timeout (504), and the mapping of task and engine errors to
HTTP answers. Tasks, batches, chat, streaming and console dry-runs all go through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from domain_lm.inference import Engine
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import ContractError, TemplateRegistry
from services.admission import NeverFits, QueueFull
from services.errors import api_error, http_error
from services.middleware import note_call
from services.security import Principal
from services.state import ServiceState


@dataclass
class Call:
    """One API call: who makes it, and the ASGI scope where the audit line reads what to log."""

    principal: Principal
    scope: dict[str, Any] = field(default_factory=dict)

    def note(self, task: str | None = None, body: Any = None) -> None:
        note_call(self.scope, task, body)


class Handler:
    """Base of the feature handlers: state access, admission, timeout and error mapping."""

    def __init__(self, state: ServiceState):
        self.state = state

    @classmethod
    def for_request(cls, state: ServiceState) -> Self:
        """The handler for one request. A plain function dependency, so FastAPI runs it in its thread
        pool: the template directory re-scan (which may compile changed files) never runs on the loop."""
        state.templates()
        return cls(state)

    @property
    def settings(self):
        return self.state.settings

    @property
    def registry(self) -> TemplateRegistry:
        return self.state.registry  # refreshed in ``for_request``, off the event loop

    @property
    def engine(self) -> Engine:
        """The engine, or 503 while it is loading (or failed to load)."""
        state = self.state
        if not state.ready() or state.engine is None:
            msg = "the engine failed to load (see the service log)" if state.engine_error else "the engine is still loading"
            raise api_error(503, "not_ready", msg)
        return state.engine

    @property
    def runner(self) -> TaskRunner:
        self.engine  # noqa: B018 - the readiness check
        assert self.state.runner is not None
        return self.state.runner

    def error(self, e: BaseException, task: str | None = None):
        """The HTTP answer for an exception, counting what the metrics count."""
        if isinstance(e, ContractError) and task is not None:
            self.state.metrics.contract_failures.labels(task).inc()
        if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
            self.state.metrics.rejected.labels("timeout").inc()
        return http_error(e, self.settings.request_timeout_s)

    @asynccontextmanager
    async def admitted(self, n: int = 1) -> AsyncIterator[None]:
        """Hold ``n`` admission slots: 429 (with Retry-After) when taken, 422 when ``n`` exceeds the limit."""
        try:
            async with self.state.admission.admit(n):
                yield
        except QueueFull as e:
            self.state.metrics.rejected.labels("queue_full").inc()
            raise api_error(429, "queue_full", str(e), headers={"Retry-After": "1"}) from None
        except NeverFits as e:
            self.state.metrics.rejected.labels("never_fits").inc()
            raise api_error(422, "too_large", str(e), field="inputs", limit=e.limit) from None

    @asynccontextmanager
    async def guarded(self, n: int = 1, task: str | None = None) -> AsyncIterator[None]:
        """``admitted(n)`` plus the request timeout and error mapping: the one way to use the model."""
        async with self.admitted(n):
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    yield
            except Exception as e:  # noqa: BLE001 - mapped, or re-raised by http_error when unexpected
                raise self.error(e, task) from None
