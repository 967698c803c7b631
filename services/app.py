"""The app factory: ``create_app(settings, engine=None)``.

Given no engine, the app loads one from ``settings.model`` in a background thread at start-up, so
``/healthz`` answers at once and ``/readyz`` turns 200 when the engine is ready (probes in
Kubernetes rely on that split). Tests pass a ``FakeEngine``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from domain_lm.errors import ConfigError
from domain_lm.inference import Engine
from domain_lm.pii import mask_value
from services import health
from services.console import router as console_router
from services.jobs.router import router as jobs_router
from services.middleware import ObserveMiddleware
from services.openai.router import router as openai_router
from services.settings import ServiceSettings
from services.state import ServiceState
from services.tasks.router import router as tasks_router

log = logging.getLogger(__name__)

# No outbound network, no usage telemetry: forced, not defaults, for a bank's on-prem service.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["VLLM_NO_USAGE_STATS"] = "1"
os.environ["DO_NOT_TRACK"] = "1"


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, without echoing the submitted values (they may hold PII)."""
    errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": mask_value(str(e.get("msg", "")))} for e in exc.errors()]
    return JSONResponse({"detail": mask_value(errors)}, status_code=422)


def create_app(settings: ServiceSettings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    state = ServiceState(settings, engine)
    if settings.auth and len(state.keys) == 0:
        raise ConfigError(
            "API keys are required but none are configured. Set DOMAIN_LM_API_KEYS or --api-keys-file "
            "(create entries with `domain-lm serve keygen`), or pass --no-auth for local development only."
        )
    if not settings.auth:
        log.warning("API keys are DISABLED (--no-auth); do not expose this service beyond localhost")
    if engine is None and not settings.model:
        raise ConfigError("No model to serve: give --model PATH (a model directory, store name or run).")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        # load_engine also loads the task store's adapters; a given engine gets them added.
        loader = loop.run_in_executor(None, state.load_engine if state.engine is None else state.sync_adapters)
        warm = loop.run_in_executor(None, state.checker.warm_up)
        try:
            yield
        finally:
            await asyncio.wait([loader, warm])
            state.close()

    docs = settings.docs
    app = FastAPI(
        title="domain-lm",
        summary="Bank-domain task endpoints on a private LLM.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = state
    app.add_middleware(ObserveMiddleware, state=state)
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.include_router(health.router)
    app.include_router(tasks_router)
    app.include_router(jobs_router)
    app.include_router(openai_router)
    app.include_router(console_router)
    return app
