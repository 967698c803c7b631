"""Everything one app instance holds: settings, engine, templates, keys, metrics, admission."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from domain_lm.inference import Engine, create_engine
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import TemplateRegistry
from services.admission import Admission
from services.metrics import Metrics
from services.security import KeyStore
from services.settings import ServiceSettings

log = logging.getLogger(__name__)


class ServiceState:
    def __init__(self, settings: ServiceSettings, engine: Engine | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.queue_limit.set(settings.max_queue)
        self.admission = Admission(settings.max_queue, on_change=self.metrics.queue_depth.set)
        self.keys = KeyStore.load(settings.api_keys, settings.api_keys_file)
        self.templates_dir = Path(settings.templates_dir)
        self.registry = TemplateRegistry.load(self.templates_dir, strict=False)
        for err in self.registry.errors:
            log.error("template skipped: %s", err)
        self._last_reload = time.monotonic()
        self._reload_lock = threading.Lock()
        self.engine: Engine | None = engine
        self.owns_engine = engine is None
        self.engine_error: str | None = None
        self.runner: TaskRunner | None = TaskRunner(engine) if engine is not None else None
        self._set_ready()

    def _set_ready(self) -> None:
        self.metrics.engine_ready.set(1 if self.ready() else 0)

    # ------------------------------------------------------------------ engine

    def load_engine(self) -> None:
        """Create the engine from settings (blocking; run in a thread so /healthz answers meanwhile)."""
        s = self.settings
        try:
            engine = create_engine(
                s.model or "", kind=s.engine, adapters=s.adapters or None, model_name=s.model_name, **s.engine_options
            )
        except Exception as e:
            self.engine_error = f"{type(e).__name__}: {e}"
            log.exception("engine failed to load")
            return
        self.engine, self.runner = engine, TaskRunner(engine)
        self._set_ready()
        log.info("engine ready", extra={"model": engine.model_name, "adapters": sorted(engine.adapters)})

    def ready(self) -> bool:
        return self.engine is not None and self.engine.is_ready()

    def close(self) -> None:
        if self.engine is not None and self.owns_engine:
            self.engine.close()
        self.metrics.engine_ready.set(0)

    # ------------------------------------------------------------------ templates

    def templates(self) -> TemplateRegistry:
        """The registry, re-scanned for changed files at most every ``template_reload_interval_s``."""
        now = time.monotonic()
        if now - self._last_reload >= self.settings.template_reload_interval_s and self._reload_lock.acquire(blocking=False):
            try:
                self._last_reload = now
                if self.registry.reload_if_changed():
                    log.info("templates reloaded", extra={"tasks": self.registry.names(), "errors": [str(e) for e in self.registry.errors]})
            finally:
                self._reload_lock.release()
        return self.registry
