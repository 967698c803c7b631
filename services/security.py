"""API keys: only SHA-256 hashes are kept at rest; each key has an id, allowed tasks and an admin flag.

Key entries come from ``DOMAIN_LM_API_KEYS`` (JSON list, or ``id:sha256hex[:task|task][:admin]``
separated by commas) and/or a YAML/JSON file ``{keys: [{id, sha256, tasks, admin}]}``. Generate a
key and its entry with ``domain-lm serve keygen``. Keys are random 32-byte tokens, so a plain
SHA-256 (compared in constant time) is enough; a slow KDF protects guessable passwords, not these.

The key file is re-read when it changes (``KeyStore.reload_if_changed``), so revoking a key is
an edit of the file, not a restart; a file that no longer parses keeps the previous keys (and the
error is logged) rather than locking every client out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator

from domain_lm.errors import ConfigError

log = logging.getLogger(__name__)

ALL = "*"
#: Pseudo-task that grants /v1/chat/completions (free-form generation).
CHAT = "chat"


class Principal(BaseModel):
    """Who is calling: a key id and what it may do."""

    id: str
    tasks: list[str] = Field(default_factory=lambda: [ALL])
    admin: bool = False

    def may_run(self, task: str) -> bool:
        return ALL in self.tasks or task in self.tasks

    @property
    def all_tasks(self) -> bool:
        """The key is not scoped to some tasks (it may see cross-task data: runs, reports)."""
        return ALL in self.tasks

    def may_change(self, task: str) -> bool:
        """Register templates for ``task``: an admin key, in its own lane (scoped admins only their tasks)."""
        return self.admin and self.may_run(task)


class KeyEntry(Principal):
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.removeprefix("sha256:").lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be a 64-hex-digit SHA-256 of the key (see `domain-lm serve keygen`)")
        return v


ANONYMOUS = Principal(id="anonymous", tasks=[ALL], admin=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "dlm-" + secrets.token_urlsafe(32)


def _parse_compact(text: str) -> list[dict]:
    entries = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if parts[1:2] == ["sha256"]:  # tolerate id:sha256:HEX
            parts = [parts[0]] + parts[2:]
        if len(parts) < 2:
            raise ConfigError(f"API key entry {item.split(':')[0]!r} must look like id:sha256hex[:task|task][:admin].")
        tasks = parts[2].split("|") if len(parts) > 2 and parts[2] else [ALL]
        entries.append({"id": parts[0], "sha256": parts[1], "tasks": tasks, "admin": len(parts) > 3 and parts[3] == "admin"})
    return entries


def parse_entries(text: str, source: str) -> list[KeyEntry]:
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text) if text[0] in "[{" else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"API keys in {source} are not valid JSON: {e}") from None
    if data is None:
        data = _parse_compact(text)
    if isinstance(data, dict):
        data = data.get("keys", [])
    try:
        return [KeyEntry.model_validate(d) for d in data]
    except Exception as e:
        raise ConfigError(f"Invalid API key entry in {source}: {e}") from None


def _file_entries(path: Path) -> list[KeyEntry]:
    if not path.is_file():
        raise ConfigError(f"API keys file {path} does not exist.")
    raw = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(raw) if path.suffix in (".yaml", ".yml") else None
    except yaml.YAMLError as e:
        raise ConfigError(f"API keys file {path} is not valid YAML: {e}") from None
    return parse_entries(json.dumps(data) if data is not None else raw, str(path))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyStore:
    """Looks up a presented key by its hash; the key file is re-read when it changes."""

    def __init__(self, entries: list[KeyEntry], env_value: str | None = None, file: str | None = None):
        self.entries = self._checked(entries)
        self._env_value = env_value
        self._file = Path(file) if file else None
        self._stamp = _stamp(self._file) if self._file else None
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()

    @staticmethod
    def _checked(entries: list[KeyEntry]) -> list[KeyEntry]:
        ids = [e.id for e in entries]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"Duplicate API key ids: {sorted(dup)}.")
        return list(entries)

    @classmethod
    def load(cls, env_value: str | None, file: str | None) -> "KeyStore":
        entries: list[KeyEntry] = []
        if env_value:
            entries += parse_entries(env_value, "DOMAIN_LM_API_KEYS")
        if file:
            entries += _file_entries(Path(file))
        return cls(entries, env_value, file)

    def reload_if_changed(self, min_interval_s: float = 0.0) -> bool:
        """Re-read the key file if it changed (at most every ``min_interval_s``); True when keys changed."""
        now = time.monotonic()
        if self._file is None or now - self._checked_at < min_interval_s or not self._lock.acquire(blocking=False):
            return False
        try:
            self._checked_at = now
            stamp = _stamp(self._file)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                entries = parse_entries(self._env_value, "DOMAIN_LM_API_KEYS") if self._env_value else []
                entries = self._checked(entries + _file_entries(self._file))
            except ConfigError as e:
                log.error("API key file not reloaded, the previous keys stay in force: %s", e)
                return False
            self.entries = entries  # one assignment: a concurrent verify sees the old list or the new one
            log.info("API keys reloaded", extra={"keys": len(entries), "pid": os.getpid()})
            return True
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return len(self.entries)

    def verify(self, key: str) -> Principal | None:
        digest = hash_key(key)
        found = None
        for e in self.entries:  # constant-time compare against every entry
            if hmac.compare_digest(digest, e.sha256):
                found = e
        return Principal(id=found.id, tasks=found.tasks, admin=found.admin) if found else None
