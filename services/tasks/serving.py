"""What the service keeps per taught task: its current task-store version, serving plan inputs,
fitted classical models and few-shot indexes.

Read on every task request, so reads are dictionary lookups: versions are read from the store once
(at start and when a job of this process completes one, ``refresh``), classical models are fitted
and indexes built off the event loop and cached (bounded). Versions taught by another replica
sharing the store are seen after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import Any

from domain_lm.inference.classical import ClassicalModel
from domain_lm.inference.taught import ServingPlan, plan_for
from domain_lm.tasks import TaskTemplate
from domain_lm.tasks.adapter_store import AdapterStore, TaskVersion
from domain_lm.tasks.fewshot import ExampleIndex, Shot

log = logging.getLogger(__name__)

#: Few-shot indexes and classical models kept (least recently used dropped first).
CACHE_SIZE = 64


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class TaughtTasks:
    """Current versions, classical models and few-shot indexes (thread-safe, lock-free reads)."""

    def __init__(self, store: AdapterStore | None):
        self.store = store
        self._current: dict[str, TaskVersion] = {}
        self._versions: dict[tuple[str, int], TaskVersion | None] = {}
        self._models: _Lru = _Lru(CACHE_SIZE)
        self._indexes: _Lru = _Lru(CACHE_SIZE)
        self._lock = threading.Lock()
        if store is not None:
            for task in store.tasks():
                self.refresh(task)

    # ------------------------------------------------------------------ versions and plans

    def refresh(self, task: str, version: TaskVersion | None = None) -> None:
        """Re-read ``task``'s current version (after a job completed or compared one)."""
        if self.store is None:
            return
        current = self.store.current(task)
        if version is not None and (current is None or version.version >= current.version):
            current = version
        with self._lock:
            if current is None:
                self._current.pop(task, None)
            else:
                self._current[task] = current
                self._versions[(task, current.version)] = current

    def current(self, task: str) -> TaskVersion | None:
        return self._current.get(task)

    def version(self, task: str, n: int) -> TaskVersion | None:
        key = (task, n)
        if key not in self._versions and self.store is not None:
            self._versions[key] = self.store.version(task, n)
        return self._versions.get(key)

    def plan(self, template: TaskTemplate, adapters: Collection[str]) -> ServingPlan:
        return plan_for(template, self.current(template.name), adapters, lambda n: self.version(template.name, n))

    def summary(self, template: TaskTemplate, adapters: Collection[str]) -> dict[str, Any]:
        return self.plan(template, adapters).as_dict()

    # ------------------------------------------------------------------ classical models

    def _fit(self, template: TaskTemplate, version: TaskVersion) -> ClassicalModel:
        key = (template.name, template.version, version.version)
        with self._lock:
            found = self._models.get(key)
        if found is not None:
            return found
        train = version.records("train")
        langs = [r.lang for r in train]
        model = ClassicalModel(template, max(set(langs), key=langs.count)).fit([r.inputs for r in train], [r.output for r in train])
        with self._lock:
            return self._models.put(key, model)

    def warm(self, template: TaskTemplate) -> None:
        """Fit the classical model of the task's current version now (job thread, start-up)."""
        v = self.current(template.name)
        if v is not None and template.output.classes is not None and "classical" in v.report.get("systems", {}):
            self._fit(template, v)

    async def classical(self, template: TaskTemplate, version: TaskVersion) -> ClassicalModel:
        return await asyncio.to_thread(self._fit, template, version)

    # ------------------------------------------------------------------ few-shot

    def _index(self, template: TaskTemplate, version: TaskVersion | None, lang: str, max_chars: int) -> ExampleIndex:
        key = (template.name, template.version, version.version if version else 0, lang, max_chars)
        with self._lock:
            found = self._indexes.get(key)
        if found is not None:
            return found
        if version is None:
            index = ExampleIndex.from_template(template, lang, max_chars)
        else:
            shots = [Shot(r.inputs, r.output) for r in version.records("train") if r.lang == lang]
            index = ExampleIndex(template, lang, shots, max_chars)
        with self._lock:
            return self._indexes.put(key, index)

    async def shots(self, template: TaskTemplate, inputs: dict[str, Any], lang: str, k: int) -> list[Shot]:
        """The ``k`` examples most similar to ``inputs``: from the current version's training side, or
        the template's own examples before any upload."""
        if k <= 0:
            return []
        max_chars = template.few_shot.max_chars if template.few_shot else 2000
        version = self.current(template.name)
        return await asyncio.to_thread(lambda: self._index(template, version, lang, max_chars).nearest(inputs, k))
