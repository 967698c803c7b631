"""Check a submitted template in a throw-away process, under a hard time and memory budget.

Compiling a template runs code on the author's input: Jinja parses and constant-folds expressions,
the examples are rendered, and the prompts are rendered once more with every input at its maximum
length (so ``{{ text * 900000 }}`` is caught at save time, not by the first long request). Any of
these can be made to take seconds or gigabytes. So the check runs in a child process, with an
address-space limit, and is killed when its time is up; the service only compiles in its own
process what passed here, where it is known to be cheap.

The children are forked by a small helper process (``python -m services.tasks.checker``, started
once with the service): it is single-threaded and has ``domain_lm.tasks`` imported, so a fork costs
a few milliseconds and inherits no engine threads or model memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from domain_lm.tasks import InputError, TaskTemplate, TemplateError, TemplateErrors
from domain_lm.tasks.registry import REGISTERED
from domain_lm.tasks.yamlsrc import load_yaml

TOO_BIG = "the template needs too much memory to compile or render"
#: Largest list an input probe sends for a ``list`` field without ``max_length``.
_PROBE_LIST_ITEMS = 1000
#: The number an input probe sends for ``integer``/``number`` fields.
_PROBE_NUMBER = 1_000_000


@dataclass(frozen=True)
class Checked:
    """What the child learned: the template's name and its explicit version, 0 when it has none
    (the service compiles it again, knowing it is cheap)."""

    name: str
    version: int


# --------------------------------------------------------------------------- in the child


def _probe_inputs(t: TaskTemplate, max_chars: int) -> dict[str, Any]:
    """Every input at its largest allowed size: what a request could send."""
    out: dict[str, Any] = {}
    for name, f in t.inputs.items():
        if f.type == "string":
            out[name] = "x" * min(f.max_length or max_chars, max_chars)
        elif f.type == "list":
            out[name] = ["x"] * min(f.max_length or _PROBE_LIST_ITEMS, _PROBE_LIST_ITEMS)
        elif f.type == "boolean":
            out[name] = True
        else:
            out[name] = _PROBE_NUMBER
    return out


def check_text(text: str, default_name: str | None, max_chars: int) -> Checked:
    """Parse, compile and probe-render a template; ``TemplateError`` (with its line) when it is refused."""
    data, source = load_yaml(text, REGISTERED)  # refuses anchors and aliases before anything expands
    if not isinstance(data, dict):
        raise TemplateError("body must be a template mapping (YAML or JSON)", REGISTERED, 1)
    if default_name is not None and "name" not in data:
        data = {**data, "name": default_name}
    versioned = data.get("version") is not None
    if not versioned:
        data = {**data, "version": 1}  # the registry assigns the real one; this only makes it compile
    template = TaskTemplate.from_dict(data, source)
    probe = _probe_inputs(template, max_chars)
    for lang in template.languages:
        for variant in range(template.num_variants(lang)):
            try:
                template.render_messages(probe, lang=lang, variant=variant)
            except InputError:
                continue  # the probe is not a valid input for this template: nothing learned
            except TemplateError as e:
                raise TemplateError(f"with every input at its maximum length, {e.message}", REGISTERED, e.line) from None
    return Checked(template.name, template.version if versioned else 0)


def _limit_memory(extra_bytes: int) -> None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[0])
        current = pages * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (current + extra_bytes, current + extra_bytes))
    except (OSError, ValueError):  # not Linux: the time limit still applies
        pass


def _refused(message: str) -> dict[str, Any]:
    return {"ok": False, "errors": [{"message": message, "line": None}]}


def _result(text: str, default_name: str | None, max_chars: int) -> dict[str, Any]:
    try:
        checked = check_text(text, default_name, max_chars)
        return {"ok": True, "name": checked.name, "version": checked.version}
    except TemplateError as e:
        errors = e.errors if isinstance(e, TemplateErrors) else [e]
        return {"ok": False, "errors": [{"message": x.message, "line": x.line} for x in errors]}
    except MemoryError:
        return _refused(TOO_BIG)
    except RecursionError:
        return _refused("the template is nested too deeply")
    except Exception as e:  # noqa: BLE001 - whatever a hostile template triggers is its own fault
        return _refused(f"the template cannot be compiled: {type(e).__name__}")


def _read_frame(f: BinaryIO) -> dict[str, Any] | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(f.read(n))


def _write_frame(f: BinaryIO, obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode()
    f.write(struct.pack(">I", len(data)) + data)
    f.flush()


def _check_in_fork(job: dict[str, Any]) -> dict[str, Any]:
    """Fork, check in the child under the limits, kill it at the deadline (runs in the helper)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits first, then the untrusted work
        os.close(r)
        _limit_memory(job["extra_bytes"])
        data = json.dumps(_result(job["text"], job["name"], job["max_chars"])).encode()
        os.write(w, data)
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + job["timeout_s"]
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return _refused(
                    f"the template took longer than {job['timeout_s']:g}s to compile and render; simplify its expressions and loops"
                )
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not chunks:  # killed by the memory limit before it could answer
        return _refused(TOO_BIG)
    return json.loads(b"".join(chunks))


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """The helper's loop: one framed JSON job in, one framed JSON result out, until stdin closes."""
    while (job := _read_frame(inp)) is not None:
        _write_frame(out, _check_in_fork(job))


# --------------------------------------------------------------------------- in the service


class TemplateChecker:
    """Sends checks to the helper process (started on first use, restarted if it dies)."""

    def __init__(self, timeout_s: float, memory_mb: int, max_input_chars: int):
        self.timeout_s = timeout_s
        self.extra_bytes = memory_mb * 2**20
        self.max_chars = max_input_chars
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _helper(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONHASHSEED": "0"}
            )
        return self._proc

    def warm_up(self) -> None:
        """Start the helper now (it imports the task code once), not on the first PUT."""
        try:
            self._run("name: warmup\n", None)
        except TemplateError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.stdin.close()  # type: ignore[union-attr]
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._proc = None

    async def check(self, text: str, default_name: str | None = None) -> Checked:
        """``Checked``, or ``TemplateError`` naming the problem (and its line when known)."""
        return await asyncio.to_thread(self._run, text, default_name)

    def _run(self, text: str, default_name: str | None) -> Checked:
        job = {
            "text": text,
            "name": default_name,
            "max_chars": self.max_chars,
            "extra_bytes": self.extra_bytes,
            "timeout_s": self.timeout_s,
        }
        with self._lock:  # one job at a time on the helper's pipe; each is bounded by its deadline
            proc = self._helper()
            try:
                _write_frame(proc.stdin, job)  # type: ignore[arg-type]
                result = _read_frame(proc.stdout)  # type: ignore[arg-type]
            except (BrokenPipeError, OSError, ValueError):
                result = None
            if result is None:
                proc.kill()
                self._proc = None
                raise TemplateError("the template checker stopped; retry", REGISTERED)
        if result["ok"]:
            return Checked(result["name"], result["version"])
        errors = [TemplateError(e["message"], REGISTERED, e["line"]) for e in result["errors"]]
        raise errors[0] if len(errors) == 1 else TemplateErrors(errors)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
