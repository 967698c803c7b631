"""The runtime template store: versions registered while serving, one immutable file each.

Layout (a directory on a persistent volume; several replicas may share it)::

    <store>/<name>@<version>.yaml   one file per version, never rewritten; the highest is current
    <store>/audit.jsonl             one line per registration: who, when, which version, its SHA-256

A version is written in ONE step: the text goes to a temporary file, is flushed to disk, and is
then hard-linked to its final name, which fails if that name exists. So a crash leaves either no
new version or a complete one, two writers (two replicas) can never both get the same version,
and no version is ever overwritten. There is no "current" pointer to update: the current version
is the highest file, so history and current cannot disagree. The file itself starts with a comment
naming who registered it and when; ``audit.jsonl`` repeats that for quick reading.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from domain_lm.core import atomic, jsonlog
from domain_lm.core.atomic import FILE_MODE
from domain_lm.tasks.errors import TemplateError

AUDIT_FILE = "audit.jsonl"
_SAFE = re.compile(r"[^A-Za-z0-9_.@:-]")


class VersionTaken(TemplateError):
    """Another writer (another replica) registered this version first."""


def version_file_name(name: str, version: int) -> str:
    return f"{name}@{version}.yaml"


class TemplateStore:
    """Immutable version files in a directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"TemplateStore({str(self.root)!r})"

    def files(self) -> list[Path]:
        """Every version file (hidden and temporary files are not versions)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.suffix in (".yaml", ".yml") and "@" in p.stem and not p.name.startswith("."))

    def writable(self) -> bool:
        """The directory exists (or can be made) and this process may create files in it."""
        return atomic.dir_writable(self.root)

    def write(self, name: str, version: int, text: str, author: str, request_id: str | None = None) -> Path:
        """Create ``<name>@<version>.yaml`` with ``text`` in one step; ``VersionTaken`` if it exists."""
        when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        who = _SAFE.sub("_", author)[:64]
        header = f"# registered by {who} at {when}" + (f" (request {_SAFE.sub('_', request_id)[:64]})" if request_id else "") + "\n"
        data = (header + text).encode("utf-8")
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / version_file_name(name, version)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            try:
                os.link(tmp, target)  # atomic, and refuses an existing name: a version is never overwritten
            except FileExistsError:
                raise VersionTaken(f"version {version} of task {name!r} was registered meanwhile (by another replica?)", name) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._sync_dir()
        self._audit(
            {
                "ts": when,
                "who": who,
                "request_id": request_id,
                "task": name,
                "version": version,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file": target.name,
            }
        )
        return target

    def _sync_dir(self) -> None:
        try:
            dfd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:  # some filesystems cannot fsync a directory; the link is still atomic
            pass
        finally:
            os.close(dfd)

    def _audit(self, entry: dict[str, Any]) -> None:
        jsonlog.append_entry(self.root / AUDIT_FILE, entry)

    def audit_entries(self) -> list[dict[str, Any]]:
        return jsonlog.read_entries(self.root / AUDIT_FILE)
