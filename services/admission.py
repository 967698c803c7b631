"""Bounded admission: at most ``limit`` requests in flight; the rest are refused at once (429).

A counter, not a queue object, so nothing can grow: a request either takes slots or is told to
come back. Single-threaded asyncio code, so no lock is needed between check and increment.
"""

from __future__ import annotations

from collections.abc import Callable


class QueueFull(Exception):
    pass


class Admission:
    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self.in_flight = 0
        self._on_change = on_change or (lambda n: None)

    def acquire(self, n: int = 1) -> None:
        if self.in_flight + n > self.limit:
            raise QueueFull(f"{self.in_flight} requests in flight; the limit is {self.limit}")
        self.in_flight += n
        self._on_change(self.in_flight)

    def release(self, n: int = 1) -> None:
        self.in_flight = max(0, self.in_flight - n)
        self._on_change(self.in_flight)

    def slot(self, n: int = 1) -> "_Slot":
        return _Slot(self, n)


class _Slot:
    def __init__(self, admission: Admission, n: int):
        self.admission, self.n = admission, n

    def __enter__(self) -> "_Slot":
        self.admission.acquire(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        self.admission.release(self.n)
