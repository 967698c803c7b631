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

from fastapi import FastAPI

from domain_lm.errors import ConfigError
from domain_lm.inference import Engine
from services.middleware import ObserveMiddleware
from services.routers import health, openai, tasks
from services.settings import ServiceSettings
from services.state import ServiceState

log = logging.getLogger(__name__)

# No outbound network, no usage telemetry: forced, not defaults, for a bank's on-prem service.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["VLLM_NO_USAGE_STATS"] = "1"
os.environ["DO_NOT_TRACK"] = "1"


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
        loader = None
        if state.engine is None:
            loader = asyncio.get_running_loop().run_in_executor(None, state.load_engine)
        try:
            yield
        finally:
            if loader is not None:
                await asyncio.wait([loader])
            state.close()

    app = FastAPI(
        title="domain-lm",
        summary="Bank-domain task endpoints on a private LLM.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(ObserveMiddleware, state=state)
    app.include_router(health.router)
    app.include_router(tasks.router)
    app.include_router(openai.router)
    try:
        from services.console import router as console_router
    except ImportError:
        console_router = None
    if console_router is not None:
        prefix = "" if (getattr(console_router, "prefix", "") or "").startswith("/console") else "/console"
        app.include_router(console_router, prefix=prefix)
    return app
