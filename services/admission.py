"""Bounded admission: at most ``limit`` slots in flight; the rest are refused at once.

A counter, not a queue object, so nothing can grow: a request either takes its slots or is told
to come back (``QueueFull``, HTTP 429), and a request that needs more slots than the limit is told
it can never be admitted (``NeverFits``, HTTP 422) instead of being asked to retry forever.
Single-threaded asyncio code, so no lock is needed between check and increment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class QueueFull(Exception):
    """Not now: the slots are taken by requests in flight (retry later)."""


class NeverFits(Exception):
    """Never: the request needs more slots than the limit (make it smaller)."""

    def __init__(self, needed: int, limit: int):
        super().__init__(f"this request needs {needed} slots; the service admits at most {limit} at a time")
        self.needed, self.limit = needed, limit


class Admission:
    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self.in_flight = 0
        self._on_change = on_change or (lambda n: None)

    def _take(self, n: int) -> None:
        if n > self.limit:
            raise NeverFits(n, self.limit)
        if self.in_flight + n > self.limit:
            raise QueueFull(f"{self.in_flight} requests in flight; the limit is {self.limit}")
        self.in_flight += n
        self._on_change(self.in_flight)

    def _give_back(self, n: int) -> None:
        self.in_flight = max(0, self.in_flight - n)
        self._on_change(self.in_flight)

    @asynccontextmanager
    async def admit(self, n: int = 1) -> AsyncIterator[None]:
        """Hold ``n`` slots for the body of the ``async with``; ``n=0`` takes none (nothing to generate)."""
        self._take(n)
        try:
            yield
        finally:
            self._give_back(n)
