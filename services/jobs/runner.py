"""Background jobs: a bounded queue, a few worker threads, status in memory.

Small on purpose. A job is a function run by a worker thread (the teaching job trains in its own
child process, so the thread mostly waits); its state, phase and progress are read by
``GET /v1/jobs/{id}``. Bounds: ``workers`` jobs run at once (default 1), at most ``max_queued``
wait (beyond it ``JobQueueFull``, HTTP 429), one job per task at a time (``JobConflict``, 409),
and the last ``history`` finished jobs are kept. Jobs live in this process only: a restart forgets
them (and the task store removes what an unfinished job left), so a client that gets no answer
for its job id after a restart uploads again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from domain_lm.pii import mask

log = logging.getLogger(__name__)

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: tuple[State, ...] = ("succeeded", "failed", "cancelled")


class JobQueueFull(Exception):
    """Not now: the queue is full."""


class JobConflict(Exception):
    """A job for the same task is queued or running."""


@dataclass
class Job:
    """One job's status (mutated by its worker only; readers copy it with ``snapshot``)."""

    id: str
    task: str
    author: str
    request_id: str | None
    state: State = "queued"
    phase: str = "queued"
    progress: float | None = None
    message: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    serving_at: float | None = None
    version: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def update(self, phase: str, progress: float | None = None, message: str = "") -> None:
        self.phase, self.progress, self.message = phase, progress, mask(message)[:500]
        if phase == "serving" and self.serving_at is None:
            self.serving_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "cancel"}
        out["wall_s"] = round((self.finished_at or time.time()) - self.created_at, 1)
        if self.serving_at is not None:
            out["upload_to_serving_s"] = round(self.serving_at - self.created_at, 1)
        return out


Work = Callable[[Job], dict[str, Any] | None]


class JobRunner:
    def __init__(self, workers: int = 1, max_queued: int = 4, history: int = 200):
        self.workers = workers
        self.max_queued = max_queued
        self.history = history
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._work: dict[str, Work] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _start_workers(self) -> None:
        """Workers start with the first job (and again after ``close``: an app may be started twice)."""
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._serve, name=f"job-worker-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ API

    def submit(self, task: str, author: str, request_id: str | None, work: Work) -> Job:
        """Queue ``work`` for ``task``; ``JobQueueFull`` / ``JobConflict`` when it cannot be taken now."""
        with self._lock:
            live = [j for j in self._jobs.values() if j.state in ("queued", "running")]
            if any(j.task == task for j in live):
                raise JobConflict(f"a job for task {task!r} is already queued or running; wait for it or cancel it")
            if sum(j.state == "queued" for j in live) >= self.max_queued:
                raise JobQueueFull(f"{self.max_queued} jobs are waiting already; retry later")
            job = Job(id=uuid.uuid4().hex, task=task, author=author, request_id=request_id)
            self._jobs[job.id] = job
            self._work[job.id] = work
            self._trim()
            self._start_workers()
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        return list(reversed(self._jobs.values()))

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop: a queued one never starts, a running one stops at its next check
        (its training process is killed within a second) and removes what it made."""
        job = self._jobs.get(job_id)
        if job is not None and job.state in ("queued", "running"):
            job.cancel.set()
            if job.state == "queued":
                self._finish(job, "cancelled", error="cancelled before it started")
        return job

    def close(self) -> None:
        for job in list(self._jobs.values()):
            if job.state in ("queued", "running"):
                job.cancel.set()
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout=10)

    # ------------------------------------------------------------------ workers

    def _trim(self) -> None:
        done = [k for k, j in self._jobs.items() if j.state in FINISHED]
        for k in done[: max(0, len(done) - self.history)]:
            del self._jobs[k]

    def _finish(self, job: Job, state: State, error: str | None = None, result: dict[str, Any] | None = None) -> None:
        with self._lock:
            if job.state in FINISHED:
                return
            job.state, job.finished_at, job.result = state, time.time(), result
            job.error = mask(error)[:1000] if error else None
            job.phase = state
            self._work.pop(job.id, None)

    def _serve(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self._jobs.get(job_id)
            work = self._work.get(job_id)
            if job is None or work is None or job.state != "queued":
                continue
            job.state, job.started_at = "running", time.time()
            job.update("starting")
            try:
                result = work(job)
            except Exception as e:  # noqa: BLE001 - a job's failure is its status, never the worker's end
                if job.cancel.is_set():
                    self._finish(job, "cancelled", error="cancelled")
                else:
                    log.warning("job %s for task %s failed: %s", job.id, job.task, type(e).__name__)
                    self._finish(job, "failed", error=str(e) or type(e).__name__)
            else:
                self._finish(job, "succeeded", result=result)
