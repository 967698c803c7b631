"""Progress reporting: one rich display shared by every stage of a run, and a quiet console.

``console`` is what the user reads: stage progress, results, where the report is, errors.
``capture_output(log)`` sends everything else a run writes (library warnings, progress bars of
other libraries, C-level output, child processes such as vLLM's engine core, which inherit the
process's stdout and stderr file descriptors) to a log file, while ``console`` keeps the terminal.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

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
        # rich would route other writes to sys.stdout/stderr through the console while a bar is
        # shown; under capture_output they belong in the log.
        redirect_stdout=False,
        redirect_stderr=False,
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


def _terminal() -> TextIO | None:
    """A new handle on the process's stderr when ``sys.stderr`` is that file descriptor (None when
    ``sys.stderr`` was replaced, e.g. by a test runner capturing it: the console keeps writing there)."""
    try:
        if sys.stderr.fileno() != 2:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    return os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8", errors="replace")


@contextmanager
def capture_output(log_path: str | Path) -> Iterator[Path]:
    """Redirect file descriptors 1 and 2 (everything the process and its children write) to
    ``log_path`` (appended), keeping ``console`` on the terminal. An exception leaving the block is
    written to the log with its traceback, then re-raised once the terminal is back, so errors still
    reach the user as before."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = _terminal()
    saved = (os.dup(1), os.dup(2))
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    if terminal is not None:
        console.file = terminal
    try:
        yield path
    except Exception:
        sys.stderr.flush()
        os.write(2, traceback.format_exc().encode("utf-8", "replace"))  # fd 2 is the log, whatever sys.stderr is now
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if terminal is not None:
            console.file = None  # back to the default: sys.stderr
            terminal.close()
