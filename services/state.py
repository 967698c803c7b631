"""Everything one app instance holds: settings, engine, templates, keys, metrics, admission, and
what teaching tasks needs (the task store, the job runner, the taught tasks' cache).

The engine can be replaced while serving (``set_engine``): the task runner follows it. Adapters
trained while serving are added to the running engine instead (``add_adapter``), no swap needed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from domain_lm.bundle import MANIFEST_NAME
from domain_lm.errors import ConfigError
from domain_lm.inference import Engine, EngineError, add_adapter, create_engine
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import TemplateRegistry
from domain_lm.tasks.adapter_store import AdapterStore
from domain_lm.tasks.store import TemplateStore
from domain_lm.train.task_adapter import TeachConfig, train_in_subprocess
from services.admission import Admission
from services.jobs.runner import JobRunner
from services.metrics import Metrics
from services.security import KeyStore
from services.settings import ServiceSettings
from services.tasks.checker import TemplateChecker
from services.tasks.serving import TaughtTasks

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


def adapter_store(settings: ServiceSettings, registry: TemplateRegistry) -> AdapterStore | None:
    """The task store, when teaching is on: ``adapter_store``, else ``adapters/`` in the template store
    (the same writable volume); None when templates are read-only (a bundle without a store)."""
    if not settings.teach:
        return None
    if settings.adapter_store:
        return AdapterStore(settings.adapter_store)
    if registry.writable and registry.store is not None:
        return AdapterStore(registry.store.root / "adapters")
    return None


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
        self.teach_config = TeachConfig.model_validate(
            {"max_scored_choices": settings.max_scored_choices, "lora_r": min(8, settings.max_lora_rank), **settings.teach_options}
        )
        if self.teach_config.lora_r > settings.max_lora_rank:
            raise ConfigError(
                f"teach_options lora_r={self.teach_config.lora_r} is above max_lora_rank={settings.max_lora_rank}: the engine could not "
                "load the adapters it trains. Lower lora_r or raise max_lora_rank."
            )
        self.adapter_store = adapter_store(settings, self.registry)
        if self.adapter_store is not None:
            for stale in self.adapter_store.remove_stale():
                log.warning("removed %s: its job did not finish before the service stopped", stale)
        self.taught = TaughtTasks(self.adapter_store)
        self.jobs = JobRunner(settings.job_workers, settings.max_jobs_queued, settings.job_history)
        #: How a teaching job trains its adapter (a child process; tests without a model swap it).
        self.train_adapter = train_in_subprocess
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
        adapters = {**(self.adapter_store.adapters() if self.adapter_store else {}), **s.adapters}
        options = dict(s.engine_options)
        if self.adapter_store is not None and s.engine in ("vllm", "auto") and s.lora_slots:
            # vLLM fixes its LoRA slots at start: room for adapters trained while serving.
            options.setdefault("lora_slots", s.lora_slots)
            options.setdefault("max_lora_rank", s.max_lora_rank)
        try:
            engine = create_engine(s.model or "", kind=s.engine, adapters=adapters or None, model_name=s.model_name, **options)
        except Exception as e:
            self.engine_error = f"{type(e).__name__}: {e}"
            log.exception("engine failed to load")
            return
        self.set_engine(engine)
        log.info("engine ready", extra={"model": engine.model_name, "adapters": sorted(engine.adapters)})
        self.sync_adapters()

    def ready(self) -> bool:
        return self.engine is not None and self.engine.is_ready()

    def sync_adapters(self) -> None:
        """Load the task store's adapters the engine does not serve yet (an engine given to
        ``create_app``, or versions completed meanwhile), and fit the taught tasks' classical models."""
        if self.adapter_store is None:
            return
        engine = self.engine
        if engine is not None:
            for name, path in self.adapter_store.adapters().items():
                if name not in engine.adapters:
                    try:
                        add_adapter(engine, name, path)
                    except EngineError as e:
                        log.warning("adapter %s not loaded: %s", name, e)
        for task in self.adapter_store.tasks():
            if task in self.registry:
                try:
                    self.taught.warm(self.registry.get(task))
                except ValueError as e:
                    log.warning("classical model of %s not fitted: %s", task, e)

    def close(self) -> None:
        self.jobs.close()
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
