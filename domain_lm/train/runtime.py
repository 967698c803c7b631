"""CPU runtime settings for training: intra-op threads, and the memory allocator.

Threads: one per CPU this process may really use. PyTorch counts the cores it sees, which in a
container can be far more than the CPU quota it is given (64 visible cores, 2 allowed: 64 threads
thrashing). An explicit ``OMP_NUM_THREADS`` (or ``DOMAIN_LM_THREADS``) wins. When other processes
compete for the same cores, fewer threads are faster: every parallel region waits for a thread the
scheduler has set aside (measured on the shared 2-core host at load ~7, one SFT forward+backward:
2 threads 29 s, 1 thread 6.5 s; idle, 2 threads are ~1.8x faster than 1). :class:`ThreadTuner`
chooses from measured step speed while training.

Allocator: a malloc with per-thread caches and no ``mmap`` per large block (jemalloc, tcmalloc)
avoids the page faults glibc takes when activations of a few MB are freed and reallocated every
step. It has to be loaded before the interpreter starts, so it is chosen by ``LD_PRELOAD``:
:func:`allocator_preload` gives the value for a library installed from the Debian packages
(``libjemalloc2``, ``libtcmalloc-minimal4``), and :func:`active_allocator` says which is in use.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

THREADS_ENV = "DOMAIN_LM_THREADS"
#: Allocator name -> shared library file names (Debian/Ubuntu packages), first found wins.
ALLOCATORS: dict[str, tuple[str, ...]] = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
}
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 CFS quota); None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """CPUs this process can use: its affinity mask, capped by the cgroup quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def configure_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads; returns the number in use.

    ``threads`` if given, else ``DOMAIN_LM_THREADS``, else, unless ``OMP_NUM_THREADS`` already chose
    (PyTorch honours it), :func:`available_cpus`.
    """
    env = os.environ.get(THREADS_ENV)
    if threads is None and env:
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={env!r} is not a whole number of threads") from None
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    want = max(1, threads or available_cpus())
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return torch.get_num_threads()


#: Load (times the CPU count) above which training tunes its thread count: a stage that just
#: finished on every core leaves the 1-minute load near the CPU count by itself.
BUSY_FACTOR = 1.5


def machine_busy(cpus: int | None = None, factor: float = 1.0) -> bool:
    """Whether other work already keeps the CPUs busy (1-minute load average above ``factor`` x the CPU count)."""
    try:
        return os.getloadavg()[0] > factor * (cpus or available_cpus())
    except OSError:
        return False


class ThreadTuner:
    """Chooses the intra-op thread count from measured step speed (seconds per token).

    Keeps the count with the best running average; tries the others when the current one has got
    ``slow_factor`` times slower than its own best (the machine got busy), and re-measures the best
    alternative every ``probe_every`` steps (the machine may have got quiet). With ``probe_first``
    each count is measured once right after the warm-up steps (the machine is busy at the start).
    A probe's measurement replaces the alternative's stale average instead of blending with it.
    """

    def __init__(
        self,
        options: Sequence[int],
        probe_every: int = 50,
        slow_factor: float = 1.5,
        alpha: float = 0.5,
        warmup: int = 1,
        probe_first: bool = False,
    ):
        self.options = sorted({max(1, int(o)) for o in options}, reverse=True)
        self.probe_every, self.slow_factor, self.alpha, self.warmup = probe_every, slow_factor, alpha, warmup
        self.avg: dict[int, float] = {}
        self.best: dict[int, float] = {}
        self.steps = 0
        self.since_probe = 0
        self.pending = list(self.options[1:]) if probe_first else []

    def observe(self, threads: int, seconds: float, tokens: int) -> int:
        """Record a step run with ``threads``; return the count to use for the next step."""
        self.steps += 1
        if self.steps <= self.warmup or tokens <= 0 or seconds <= 0 or len(self.options) < 2:
            return threads
        rate = seconds / tokens
        prev = self.avg.get(threads)
        self.avg[threads] = rate if prev is None else self.alpha * rate + (1 - self.alpha) * prev
        self.best[threads] = min(self.best.get(threads, math.inf), rate)
        self.since_probe += 1
        others = [o for o in self.options if o != threads]
        untried = [o for o in others if o not in self.avg]
        if self.pending:
            return self._probe(self.pending.pop(0))
        if untried and self.avg[threads] > self.slow_factor * self.best[threads]:
            return self._probe(untried[0])
        if self.since_probe >= self.probe_every and others:
            return self._probe(min(others, key=lambda o: self.avg.get(o, 0.0)))
        return min(self.avg, key=lambda o: self.avg[o])

    def _probe(self, threads: int) -> int:
        self.since_probe = 0
        self.avg.pop(threads, None)
        return threads


class ThreadTuning(TrainerCallback):
    """Times every optimizer step and lets a :class:`ThreadTuner` set PyTorch's thread count; the
    count the process had is restored when training ends."""

    def __init__(self, tuner: ThreadTuner, tokens: Callable[[], int]) -> None:
        self.tuner, self.tokens = tuner, tokens
        self._t0, self._tok0 = 0.0, 0
        self._initial = torch.get_num_threads()

    def on_train_begin(self, args, state, control, **kwargs):
        self._initial = torch.get_num_threads()

    def on_train_end(self, args, state, control, **kwargs):
        torch.set_num_threads(self._initial)

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0, self._tok0 = time.perf_counter(), self.tokens()

    def on_step_end(self, args, state, control, **kwargs):
        current = torch.get_num_threads()
        threads = self.tuner.observe(current, time.perf_counter() - self._t0, self.tokens() - self._tok0)
        if threads != current:
            log.info("step %d: %d -> %d torch threads", state.global_step, current, threads)
            torch.set_num_threads(threads)


def thread_tuning(tokens: Callable[[], int], world_size: int) -> ThreadTuning | None:
    """A callback tuning the threads of CPU training in one process (None on a GPU, with several
    ranks, one CPU, or a thread count set explicitly). ``tokens()``: tokens trained so far."""
    cpus = available_cpus()
    if torch.cuda.is_available() or world_size > 1 or cpus < 2 or os.environ.get(THREADS_ENV) or os.environ.get("OMP_NUM_THREADS"):
        return None
    # Only where other work already loads the host: there a thread count's step time moves ~4x. On a
    # quiet host the steps of a task mix (short and long batches) spread ~2.5x per token by
    # themselves, which the tuner read as load: a quiet demo SFT ran 21 of 22 logged steps on one
    # of two cores. All CPUs are then the right count (bench/sft_speed.py).
    if not machine_busy(cpus, factor=BUSY_FACTOR):
        return None
    return ThreadTuning(ThreadTuner((cpus, max(1, cpus // 2), 1), probe_first=True), tokens)


def allocator_library(name: str, lib_dirs: tuple[str, ...] = _LIB_DIRS) -> Path | None:
    """The installed shared library of allocator ``name`` (a key of :data:`ALLOCATORS`), or None."""
    if name not in ALLOCATORS:
        raise ValueError(f"unknown allocator {name!r}; choose one of {', '.join(ALLOCATORS)}")
    for d in lib_dirs:
        for f in ALLOCATORS[name]:
            p = Path(d) / f
            if p.is_file():
                return p
    return None


def allocator_preload(name: str, current: str | None = None, lib_dirs: tuple[str, ...] = _LIB_DIRS) -> str | None:
    """The ``LD_PRELOAD`` value that adds allocator ``name`` to ``current``; None when it is not installed."""
    lib = allocator_library(name, lib_dirs)
    if lib is None:
        return None
    rest = [p for p in (current or "").split(":") if p and Path(p).name != lib.name]
    return ":".join([str(lib), *rest])


def active_allocator() -> str:
    """Which allocator this process runs with: a key of :data:`ALLOCATORS`, or ``glibc``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = os.environ.get("LD_PRELOAD", "")
    for name, files in ALLOCATORS.items():
        if any(f in maps for f in files):
            return name
    return "glibc"
