"""Append-only JSON-lines logs that several processes (service replicas) write to at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from domain_lm.core.atomic import FILE_MODE


def append_entry(path: str | Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to ``path`` as one JSON line, in one ``O_APPEND`` write so that lines from
    several writers never interleave."""
    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """The entries of the log at ``path``, oldest first; none when it does not exist. A line that is
    not JSON (one torn by a crash mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
