"""The task store: what teaching a task produced, one immutable version directory per job.

Lives beside the template store on the writable volume. Layout::

    <store>/<task>/<N>/job.json       who started it, where (host, pid), when: written first
    <store>/<task>/<N>/train.jsonl    the uploaded examples on the training side of the split
    <store>/<task>/<N>/held.jsonl     ... and on the held-out side (what every score is measured on)
    <store>/<task>/<N>/adapter/       the LoRA adapter (absent when the job trained none)
    <store>/<task>/<N>/report.json    scores, calibration, choice: written LAST, atomically
    <store>/<task>/<N>/comparison.json  zero-/few-shot scores, added after the version serves
    <store>/<task>/<N>.failed         a failed version's reason (the number is never reused)
    <store>/audit.jsonl               one line per event (created, completed, failed)

A version number is taken by creating its directory (``mkdir`` refuses an existing one, so two
jobs or two replicas never share a number). A version is *complete* once ``report.json`` exists;
the highest complete version is the task's current one, so there is no pointer to get out of step,
and older versions stay on disk and addressable (adapter ``<task>@<N>``). A job that fails
removes its directory; one whose process died is removed at the next start on the same host.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain_lm.core import atomic, jsonlog
from domain_lm.data.records import TaskRecord

AUDIT_FILE = "audit.jsonl"
REPORT = "report.json"
COMPARISON = "comparison.json"
JOB = "job.json"
#: A failed version leaves ``<N>.failed`` (its reason) so its number is not reused.
FAILED = ".failed"
ADAPTER_DIR = "adapter"
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
_SAFE = re.compile(r"[^A-Za-z0-9_.@:-]")
#: This process's identity in job.json (a pid alone repeats: a container's service is always pid 1).
_PROCESS = uuid.uuid4().hex


def adapter_name(task: str, version: int) -> str:
    """The engine name of a task version's adapter (what a request's ``adapter`` may say)."""
    return f"{task}@{version}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TaskVersion:
    """One complete version: its directory and report."""

    task: str
    version: int
    path: Path
    report: dict[str, Any]
    comparison: dict[str, Any]

    @property
    def adapter_dir(self) -> Path | None:
        d = self.path / ADAPTER_DIR
        return d if (d / "adapter_config.json").is_file() else None

    @property
    def adapter(self) -> str | None:
        """The adapter's engine name, when this version trained one."""
        return adapter_name(self.task, self.version) if self.adapter_dir is not None else None

    def records(self, split: str) -> list[TaskRecord]:
        """``train`` or ``held`` records of this version."""
        return read_records(self.path / f"{split}.jsonl")


def write_records(path: Path, records: list[TaskRecord]) -> None:
    atomic.write_text(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))


def read_records(path: Path) -> list[TaskRecord]:
    if not path.is_file():
        return []
    return [TaskRecord.from_json(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class AdapterStore:
    """Versions of taught tasks in a directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    def writable(self) -> bool:
        return atomic.dir_writable(self.root)

    # ------------------------------------------------------------------ reading

    def _numbers(self, task: str) -> list[int]:
        d = self.root / task
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and _VERSION.match(p.name))

    def _taken(self, task: str) -> int:
        """The highest number ever used, failed versions included (their adapter name may still be
        loaded in an engine, so a number is never given out twice)."""
        d = self.root / task
        failed = [int(p.stem) for p in d.glob("*" + FAILED) if _VERSION.match(p.stem)] if d.is_dir() else []
        return max([0, *self._numbers(task), *failed])

    def versions(self, task: str) -> list[int]:
        """Complete versions of ``task``, oldest first."""
        return [n for n in self._numbers(task) if (self.root / task / str(n) / REPORT).is_file()]

    def version(self, task: str, version: int) -> TaskVersion | None:
        path = self.root / task / str(version)
        try:
            report = json.loads((path / REPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        try:
            comparison = json.loads((path / COMPARISON).read_text(encoding="utf-8")) if (path / COMPARISON).is_file() else {}
        except (OSError, ValueError):
            comparison = {}
        return TaskVersion(task, version, path, report, comparison)

    def current(self, task: str) -> TaskVersion | None:
        """The highest complete version, or None when the task was never taught."""
        found = self.versions(task)
        return self.version(task, found[-1]) if found else None

    def tasks(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def adapters(self) -> dict[str, str]:
        """Engine name -> directory of every complete version's adapter (what a restart loads)."""
        out: dict[str, str] = {}
        for task in self.tasks():
            for n in self.versions(task):
                v = self.version(task, n)
                if v is not None and v.adapter_dir is not None:
                    out[adapter_name(task, n)] = str(v.adapter_dir)
        return out

    # ------------------------------------------------------------------ writing

    def reserve(self, task: str, job_id: str, author: str, request_id: str | None = None) -> tuple[int, Path]:
        """Take the next version number of ``task`` by creating its directory; returns (number, dir)."""
        d = self.root / task
        d.mkdir(parents=True, exist_ok=True)
        n = self._taken(task) + 1
        for _ in range(100):
            path = d / str(n)
            try:
                path.mkdir()
            except FileExistsError:  # another job or replica took it meanwhile
                n += 1
                continue
            info = {
                "job": job_id,
                "who": _SAFE.sub("_", author)[:64],
                "request_id": request_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process": _PROCESS,
                "created": now(),
            }
            atomic.write_text(path / JOB, json.dumps(info))
            self.audit({"event": "created", "task": task, "version": n, **info})
            return n, path
        raise OSError(f"no free version number for task {task!r} in {self.root}")

    def complete(self, task: str, version: int, report: dict[str, Any]) -> TaskVersion:
        """Write the report: from now on the version is complete (and current, if the highest)."""
        path = self.root / task / str(version)
        atomic.write_text(path / REPORT, json.dumps(report, ensure_ascii=False, indent=1))
        self.audit({"event": "completed", "task": task, "version": version, "job": report.get("job"), "ts": now()})
        v = self.version(task, version)
        assert v is not None
        return v

    def add_comparison(self, task: str, version: int, comparison: dict[str, Any]) -> None:
        atomic.write_text(self.root / task / str(version) / COMPARISON, json.dumps(comparison, ensure_ascii=False, indent=1))

    def discard(self, task: str, version: int, job_id: str, reason: str) -> None:
        """Remove an incomplete version (its job failed); a complete one is never removed."""
        path = self.root / task / str(version)
        if (path / REPORT).is_file():
            return
        atomic.write_text(path.parent / f"{version}{FAILED}", json.dumps({"job": job_id, "reason": reason[:500], "ts": now()}))
        shutil.rmtree(path, ignore_errors=True)
        self.audit({"event": "failed", "task": task, "version": version, "job": job_id, "reason": reason[:500], "ts": now()})

    def remove_stale(self) -> list[str]:
        """Remove incomplete versions left by a process of this host that is gone (jobs do not survive
        a restart); another host's are left alone (it may still be working on them)."""
        removed = []
        host = socket.gethostname()
        if not self.root.is_dir():
            return removed
        for task_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for n in self._numbers(task_dir.name):
                path = task_dir / str(n)
                if (path / REPORT).is_file():
                    continue
                try:
                    info = json.loads((path / JOB).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    info = {"host": host, "pid": -1}
                mine = info.get("process") == _PROCESS
                if info.get("host") == host and not mine and not _alive(int(info.get("pid", -1))):
                    self.discard(task_dir.name, n, str(info.get("job")), "the process running the job ended before it finished")
                    removed.append(adapter_name(task_dir.name, n))
        return removed

    def audit(self, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        jsonlog.append_entry(self.root / AUDIT_FILE, entry)

    def audit_entries(self) -> list[dict[str, Any]]:
        return jsonlog.read_entries(self.root / AUDIT_FILE)


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():  # our own pid in an older job.json: a previous process (container restart)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
