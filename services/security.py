"""API keys: only SHA-256 hashes are kept at rest; each key has an id, allowed tasks and an admin flag.

Key entries come from ``DOMAIN_LM_API_KEYS`` (JSON list, or ``id:sha256hex[:task|task][:admin]``
separated by commas) and/or a YAML/JSON file ``{keys: [{id, sha256, tasks, admin}]}``. Generate a
key and its entry with ``domain-lm serve keygen``. Keys are random 32-byte tokens, so a plain
SHA-256 (compared in constant time) is enough; a slow KDF protects guessable passwords, not these.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator

from domain_lm.errors import ConfigError

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


class KeyStore:
    """Looks up a presented key by its hash."""

    def __init__(self, entries: list[KeyEntry]):
        ids = [e.id for e in entries]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"Duplicate API key ids: {sorted(dup)}.")
        self.entries = list(entries)

    @classmethod
    def load(cls, env_value: str | None, file: str | None) -> "KeyStore":
        entries: list[KeyEntry] = []
        if env_value:
            entries += parse_entries(env_value, "DOMAIN_LM_API_KEYS")
        if file:
            p = Path(file)
            if not p.is_file():
                raise ConfigError(f"API keys file {p} does not exist.")
            raw = p.read_text(encoding="utf-8")
            data = yaml.safe_load(raw) if p.suffix in (".yaml", ".yml") else None
            entries += parse_entries(json.dumps(data) if data is not None else raw, str(p))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def verify(self, key: str) -> Principal | None:
        digest = hash_key(key)
        found = None
        for e in self.entries:  # constant-time compare against every entry
            if hmac.compare_digest(digest, e.sha256):
                found = e
        return Principal(id=found.id, tasks=found.tasks, admin=found.admin) if found else None
