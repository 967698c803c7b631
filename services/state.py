"""Everything one app instance holds: settings, engine, templates, keys, metrics, admission.

The engine can be replaced while serving (``set_engine``): the task runner follows it, so a later
feature (adapters loaded at run time) swaps engines without touching the handlers.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from domain_lm.bundle import MANIFEST_NAME
from domain_lm.inference import Engine, create_engine
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import TemplateRegistry
from domain_lm.tasks.store import TemplateStore
from services.admission import Admission
from services.metrics import Metrics
from services.security import KeyStore
from services.settings import ServiceSettings
from services.tasks.checker import TemplateChecker

log = logging.getLogger(__name__)


def template_store(settings: ServiceSettings) -> tuple[TemplateStore | None, bool]:
    """The runtime store and whether registration is off.

    An explicit ``template_store`` wins. Otherwise templates that belong to a bundle (a
    ``MANIFEST.sha256`` beside them) stay read-only, since writing there would break the bundle's
    verification; a plain directory keeps its versions in ``.versions/`` as before.
    """
    if settings.template_store:
        return TemplateStore(settings.template_store), False
    in_bundle = (Path(settings.templates_dir).resolve().parent / MANIFEST_NAME).is_file()
    return None, in_bundle


class ServiceState:
    def __init__(self, settings: ServiceSettings, engine: Engine | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.queue_limit.set(settings.max_queue)
        self.admission = Admission(settings.max_queue, on_change=self.metrics.queue_depth.set)
        self.keys = KeyStore.load(settings.api_keys, settings.api_keys_file)
        self.templates_dir = Path(settings.templates_dir)
        store, read_only = template_store(settings)
        self.registry = TemplateRegistry.load(self.templates_dir, strict=False, store=store, read_only=read_only)
        for err in self.registry.errors:
            log.error("template skipped: %s", err)
        self.checker = TemplateChecker(settings.template_check_timeout_s, settings.template_check_memory_mb, settings.max_input_chars)
        self._last_reload = time.monotonic()
        self._reload_lock = threading.Lock()
        self.engine: Engine | None = None
        self.runner: TaskRunner | None = None
        self.owns_engine = engine is None
        self.engine_error: str | None = None
        if engine is not None:
            self.set_engine(engine)
        self._set_ready()

    def _set_ready(self) -> None:
        self.metrics.engine_ready.set(1 if self.ready() else 0)

    # ------------------------------------------------------------------ engine

    def set_engine(self, engine: Engine) -> None:
        """Serve ``engine`` from now on (requests in flight finish on the one they started with)."""
        self.engine, self.runner = engine, TaskRunner(engine)
        self._set_ready()

    def load_engine(self) -> None:
        """Create the engine from settings (blocking; run in a thread so /healthz answers meanwhile)."""
        s = self.settings
        try:
            engine = create_engine(s.model or "", kind=s.engine, adapters=s.adapters or None, model_name=s.model_name, **s.engine_options)
        except Exception as e:
            self.engine_error = f"{type(e).__name__}: {e}"
            log.exception("engine failed to load")
            return
        self.set_engine(engine)
        log.info("engine ready", extra={"model": engine.model_name, "adapters": sorted(engine.adapters)})

    def ready(self) -> bool:
        return self.engine is not None and self.engine.is_ready()

    def close(self) -> None:
        if self.engine is not None and self.owns_engine:
            self.engine.close()
        self.checker.close()
        self.metrics.engine_ready.set(0)

    # ------------------------------------------------------------------ templates and keys

    def templates(self) -> TemplateRegistry:
        """The registry, re-scanned for changed files at most every ``template_reload_interval_s``."""
        now = time.monotonic()
        if now - self._last_reload >= self.settings.template_reload_interval_s and self._reload_lock.acquire(blocking=False):
            try:
                self._last_reload = now
                if self.registry.reload_if_changed():
                    log.info("templates reloaded", extra={"tasks": self.registry.names(), "errors": len(self.registry.errors)})
            finally:
                self._reload_lock.release()
        return self.registry

    def key_store(self) -> KeyStore:
        """The keys, with the key file re-read when it changed (revocation without a restart)."""
        self.keys.reload_if_changed(self.settings.keys_reload_interval_s)
        return self.keys
