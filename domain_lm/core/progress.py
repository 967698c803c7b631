"""Progress reporting: one rich display shared by every stage of a run."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

_active: Progress | None = None


def make_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


@contextmanager
def display() -> Iterator[Progress]:
    """The shared progress display; nested calls reuse the outer one."""
    global _active
    if _active is not None:
        yield _active
        return
    _active = make_progress()
    try:
        with _active:
            yield _active
    finally:
        _active = None


@contextmanager
def task(description: str, total: float | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar; yields ``advance(n=1, description=None)``."""
    with display() as progress:
        tid = progress.add_task(description, total=total)

        def advance(n: float = 1, description: str | None = None) -> None:
            progress.update(tid, advance=n, **({"description": description} if description else {}))

        try:
            yield advance
        finally:
            progress.update(tid, completed=progress.tasks[tid].total or progress.tasks[tid].completed)
            progress.stop_task(tid)
