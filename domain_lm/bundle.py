"""Offline model bundles: everything a private server needs to serve a model, checksummed.

A bundle is a plain directory (copy it with rsync, tar it, mount it read-only)::

    bundle.json       what is inside: model kind, adapters, templates, source run, versions
    MODEL_CARD.md     the bundle card, followed by the training run's model card when there is one
    model/            merged full weights + tokenizer (or the base model, when adapters are kept apart)
    adapters/<name>/  optional LoRA adapters served on top of ``model/``
    templates/        the task templates the service loads
    MANIFEST.sha256   ``<sha256>  <path>`` for every other file, in ``sha256sum`` format

    MANIFEST.sha256.sig   the Ed25519 signature of MANIFEST.sha256 (``domain-lm bundle sign``)

``MANIFEST.sha256`` makes tampering and corruption visible: :func:`verify_bundle` re-hashes every
file and refuses a bundle with a changed, missing or extra file, a symlink or a special file
(FIFO, device, socket), naming it. A hash alone does not stop someone who rewrites the manifest
too, so the manifest is signed (``domain_lm.signing``): ``verify_bundle`` refuses a bundle that
is not signed by one of the trusted public keys, unless told ``allow_unsigned=True`` (development).
The manifest can also be pinned by its SHA-256 (``manifest_sha256=``). Every path ``bundle.json``
names must stay inside the bundle. The hashes can be checked without Python too:
``cd BUNDLE && sha256sum --check --strict MANIFEST.sha256``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from domain_lm import signing
from domain_lm.core import atomic
from domain_lm.core.hashing import sha256_file
from domain_lm.errors import DomainLMError

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.sha256"
SIGNATURE_NAME = "MANIFEST.sha256.sig"
METADATA_NAME = "bundle.json"
CARD_NAME = "MODEL_CARD.md"
BUNDLE_FORMAT = 1

#: Stages that produce a generator model, in the order ``--run`` prefers them (RLHF last wins).
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BundleError(DomainLMError):
    """A bundle could not be built, or failed verification (tampered, corrupted, incomplete)."""


@dataclass(frozen=True)
class BundleInfo:
    """A verified bundle: where its parts are, and what its metadata says."""

    root: Path
    model_dir: Path
    templates_dir: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    manifest_sha256: str = ""
    files: int = 0
    signed_by: str | None = None


# --------------------------------------------------------------------------- manifest


def _bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` as a POSIX relative path, sorted; links and special files are refused.

    Nothing is followed or opened here (``lstat`` only), so a FIFO cannot block the check and a
    link cannot point the manifest at files outside the bundle.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(
                    f"Bundle {root} contains a symbolic link, {rel}. Bundles hold plain files only, so that "
                    "the manifest covers exactly what is served; replace the link by the file it points to and rebuild."
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(
                    f"Bundle {root} contains {rel}, which is not a regular file (a FIFO, socket or device). "
                    "Bundles hold plain files only; remove it and copy the bundle again from the trusted source."
                )
            if rel not in (MANIFEST_NAME, SIGNATURE_NAME):
                out.append(rel)
    return sorted(out)


def write_manifest(root: str | Path) -> str:
    """Write ``MANIFEST.sha256`` over every file under ``root``; return the manifest's own SHA-256."""
    root = Path(root)
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in _bundle_files(root)]
    text = "".join(lines)
    (root / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(root: Path) -> tuple[dict[str, str], str]:
    """Parse ``MANIFEST.sha256`` into {path: sha256}; return it with the manifest's own SHA-256."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{root} has no {MANIFEST_NAME}, so it is not a bundle or it is incomplete. "
            "Build one with `domain-lm bundle build` and copy the whole directory."
        )
    raw = path.read_bytes()
    entries: dict[str, str] = {}
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        m = _MANIFEST_LINE.match(line)
        rel = m.group(2) if m else ""
        parts = PurePosixPath(rel).parts
        if not m or rel.startswith("/") or ".." in parts or rel in (MANIFEST_NAME, SIGNATURE_NAME) or rel in entries:
            raise BundleError(
                f"Bundle {root}: {MANIFEST_NAME} line {n} is not a valid entry ({line[:120]!r}); "
                "the manifest was edited or corrupted. Do not serve this bundle; copy it again from the trusted source."
            )
        entries[rel] = m.group(1)
    return entries, hashlib.sha256(raw).hexdigest()


def _problems(root: Path, entries: dict[str, str]) -> list[str]:
    present = set(_bundle_files(root))
    problems = []
    for rel, want in entries.items():
        if rel not in present:
            problems.append(f"{rel} is listed in {MANIFEST_NAME} but missing")
            continue
        got = sha256_file(root / rel)
        if got != want:
            problems.append(f"{rel} does not match its SHA-256 in {MANIFEST_NAME} (expected {want[:16]}…, got {got[:16]}…)")
    for rel in sorted(present - set(entries)):
        problems.append(f"{rel} is not listed in {MANIFEST_NAME} (a file was added after the bundle was built)")
    return problems


def _inside(root: Path, rel: Any, what: str) -> Path:
    """``root / rel`` for a relative path from bundle.json that stays inside the bundle."""
    if not isinstance(rel, str) or not rel or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise BundleError(f"Bundle {root}: {METADATA_NAME} gives {what} as {str(rel)[:120]!r}, which is not a path inside the bundle.")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise BundleError(f"Bundle {root}: {METADATA_NAME} points {what} outside the bundle ({str(rel)[:120]!r}).")
    return path


def check_signature(root: Path, raw_manifest: bytes, trusted: dict[str, Ed25519PublicKey] | None, allow_unsigned: bool) -> str | None:
    """The key id that signed the manifest, None when unsigned and allowed; else ``BundleError``."""
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        if allow_unsigned:
            log.warning("bundle %s is not signed; serving it only because unsigned bundles were allowed", root)
            return None
        raise BundleError(
            f"Bundle {root} is not signed ({SIGNATURE_NAME} is missing), so nothing proves who built it. Sign it with "
            "`domain-lm bundle sign BUNDLE --key PRIVATE.pem`, or pass --allow-unsigned (development only)."
        )
    try:
        signature = signing.Signature.from_json(sig_path.read_text(encoding="utf-8", errors="replace"), str(sig_path))
    except signing.SigningError as e:
        raise BundleError(str(e)) from None
    if not trusted:
        if allow_unsigned:
            log.warning("bundle %s is signed by %s but no trusted key was given; the signature was not checked", root, signature.key_id)
            return None
        raise BundleError(
            f"Bundle {root} is signed by key {signature.key_id}, but no trusted public key was given to check it: "
            "pass --public-key FILE (or DOMAIN_LM_BUNDLE_PUBLIC_KEY)."
        )
    try:
        return signing.verify(raw_manifest, signature, trusted, f"Bundle {root}")
    except signing.SigningError as e:
        raise BundleError(str(e)) from None


def verify_bundle(
    path: str | Path,
    manifest_sha256: str | None = None,
    public_keys: dict[str, Ed25519PublicKey] | None = None,
    allow_unsigned: bool = False,
) -> BundleInfo:
    """Check the signature, re-hash every file of the bundle at ``path``, and return where its parts are.

    Raises :class:`BundleError` naming the problem when the manifest is not signed by one of
    ``public_keys`` (unless ``allow_unsigned``), when a file was changed, removed or added (or is a
    link or a special file), when the manifest is malformed, when ``manifest_sha256`` (the digest
    printed by ``bundle build``) does not match, or when ``bundle.json`` points outside the bundle.
    Nothing should be served from a bundle that does not pass.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise BundleError(f"Bundle directory {path} does not exist or is not a directory.")
    entries, digest = read_manifest(root)
    signed_by = check_signature(root, (root / MANIFEST_NAME).read_bytes(), public_keys, allow_unsigned)
    if manifest_sha256 and digest != manifest_sha256.strip().lower():
        raise BundleError(
            f"Bundle {root}: {MANIFEST_NAME} has SHA-256 {digest}, not the expected {manifest_sha256.strip()}. "
            "The manifest was replaced after the bundle was built; do not serve this bundle."
        )
    problems = _problems(root, entries)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BundleError(
            f"Bundle {root} failed verification and will not be served: {shown}. "
            "The bundle was modified or corrupted after it was built; copy it again from the trusted "
            "source or rebuild it with `domain-lm bundle build`."
        )
    try:
        meta = json.loads((root / METADATA_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"Bundle {root}: {METADATA_NAME} is missing or not valid JSON ({e}).") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"Bundle {root} has format {meta.get('format') if isinstance(meta, dict) else None!r}; this build of domain-lm reads format "
            f"{BUNDLE_FORMAT}. Rebuild the bundle with the domain-lm version installed on this server."
        )
    model_dir = _inside(root, meta.get("model", "model"), "the model")
    if not (model_dir / "config.json").is_file():
        raise BundleError(f"Bundle {root} has no model weights: {model_dir / 'config.json'} is missing.")
    adapters_meta = meta.get("adapters") or {}
    if not isinstance(adapters_meta, dict) or not all(isinstance(n, str) and _ADAPTER_NAME.match(n) for n in adapters_meta):
        raise BundleError(f"Bundle {root}: {METADATA_NAME} lists adapters that are not a mapping of plain names to directories.")
    adapters = {name: _inside(root, rel, f"adapter {name!r}") for name, rel in adapters_meta.items()}
    return BundleInfo(
        root=root,
        model_dir=model_dir,
        templates_dir=_inside(root, meta.get("templates", "templates"), "the templates"),
        adapters=adapters,
        metadata=meta,
        manifest_sha256=digest,
        files=len(entries),
        signed_by=signed_by,
    )


def sign_bundle(path: str | Path, private_key: Ed25519PrivateKey) -> str:
    """Sign a bundle's manifest (after checking its files still match it); returns the key id."""
    root = Path(path).resolve()
    entries, _ = read_manifest(root)
    problems = _problems(root, entries)
    if problems:
        raise BundleError(f"Bundle {root} does not match its manifest ({problems[0]}); rebuild it before signing.")
    signature = signing.sign((root / MANIFEST_NAME).read_bytes(), private_key)
    atomic.write_text(root / SIGNATURE_NAME, signature.to_json())
    return signature.key_id


# --------------------------------------------------------------------------- build


#: Hidden directories that belong in a bundle: the template registry's version history, so that
#: clients pinned to an older template version keep working on the target.
_KEEP_HIDDEN = {".versions"}


def _copy_tree(src: Path, dest: Path) -> int:
    """Copy the non-hidden files of ``src`` (caches, editor and temp files, .git stay behind)."""
    n = 0
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        hidden_dirs = [part for part in rel.parts[:-1] if part.startswith(".")]
        if rel.name.startswith(".") or any(d not in _KEEP_HIDDEN for d in hidden_dirs) or not p.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest / rel)  # follows symlinks: the bundle holds the real bytes
        n += 1
    return n


def _readable(root: Path) -> None:
    """Give every staged file and directory ordinary umask modes: libraries that save through a
    temporary file (merged weights) leave 0600, which a service user could not read."""
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, atomic.DIR_MODE)
        for f in filenames:
            os.chmod(Path(dirpath) / f, atomic.FILE_MODE)


def model_from_run(run: str | Path, stage: str | None = None, runs_dir: str | Path = "runs") -> tuple[Path, dict[str, Any]]:
    """The ``model`` artefact of a run's final generator stage (or of ``stage``), and its provenance."""
    from domain_lm.pipeline.store import Run

    root = Path(run)
    if not root.is_dir():
        root = Path(runs_dir) / str(run)
    if not root.is_dir():
        raise BundleError(f"Run {run} not found (looked for {Path(run)} and {root}). Pass a run directory or a run name under --runs-dir.")
    store = Run(root)
    from domain_lm.pipeline.graph import FINAL_MODEL_ORDER

    names = (stage,) if stage else FINAL_MODEL_ORDER
    done = {s: r for s in names if (r := store.load(s)) is not None and r.has("model")}
    if not done:
        raise BundleError(
            f"Run {root} has no complete stage ({'|'.join(names)}) with a model artefact. Run the pipeline first, or pass --model DIR."
        )
    # The RLHF stage that finished last is the deployable model; otherwise the latest in pipeline order.
    rl = [done[s] for s in ("ppo", "dpo") if s in done]
    chosen = max(rl, key=lambda r: r.finished_at) if rl else next(iter(done.values()))
    source = {
        "run": str(root),
        "stage": chosen.stage,
        "fingerprint": chosen.fingerprint,
        "metrics": {k: v for k, v in chosen.metrics.items() if isinstance(v, (int, float, str))},
        "lineage": chosen.lineage,
        "stage_dir": str(chosen.path),
    }
    return chosen.artefact("model"), source


def _template_names(templates: Path) -> list[dict[str, Any]]:
    """Load the templates with the task registry when it is available, so a broken one fails the build."""
    try:
        from domain_lm.tasks import TemplateRegistry
    except ImportError:  # the tasks package is optional for building; the service validates on load
        log.warning("domain_lm.tasks is not available: templates are bundled without validation")
        return [{"file": p.name} for p in sorted(templates.glob("*.y*ml"))]
    try:
        reg = TemplateRegistry.load(templates)
    except DomainLMError as e:
        raise BundleError(f"Templates in {templates} are invalid, so no bundle was built: {e}") from None
    out = []
    for name in reg.names():
        t = reg.get(name)
        out.append({"name": t.name, "version": t.version, "languages": list(t.languages)})
    return out


def _model_summary(model_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size", "torch_dtype", "dtype")
    return {k: cfg[k] for k in keys if k in cfg}


def _card(meta: dict[str, Any], upstream_card: str | None) -> str:
    lines = [
        f"# Model bundle: {meta['name']}",
        "",
        f"- Built: {meta['created_at']} with domain-lm {meta['domain_lm_version']}",
        f"- Weights: `{meta['model']}/` ({meta['model_kind']}); architecture: {json.dumps(meta['model_summary'])}",
        f"- Adapters: {', '.join(f'`{n}`' for n in meta['adapters']) or 'none'}",
        f"- Task templates: {', '.join(t.get('name', t.get('file', '?')) for t in meta['task_templates']) or 'none'}",
    ]
    if meta.get("source"):
        src = meta["source"]
        lines.append(f"- Source: run `{src.get('run')}`, stage `{src.get('stage')}`, fingerprint `{str(src.get('fingerprint'))[:16]}`")
    lines += [
        "",
        f"Verify before serving: `domain-lm bundle verify .` or `sha256sum --check --strict {MANIFEST_NAME}`.",
        "",
    ]
    if upstream_card:
        lines += ["## Training model card", "", upstream_card.strip(), ""]
    return "\n".join(lines)


def build_bundle(
    out: str | Path,
    templates: str | Path,
    model: str | Path | None = None,
    run: str | Path | None = None,
    stage: str | None = None,
    runs_dir: str | Path = "runs",
    adapters: dict[str, str | Path] | None = None,
    name: str | None = None,
    model_card: str | Path | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> BundleInfo:
    """Build a bundle at ``out`` (atomically: a failed build leaves nothing behind) and verify it.

    The model comes from ``model`` (a model directory, or an adapter directory which is merged
    into its base here) or from ``run`` (its final generator stage). ``adapters`` maps names to
    LoRA adapter directories kept apart, served on top of ``model/`` per request. With
    ``signing_key`` the manifest is signed too (else sign later with ``sign_bundle``).
    """
    from domain_lm import __version__
    from domain_lm.models.loading import is_adapter_dir, merge_adapter

    if (model is None) == (run is None):
        raise BundleError("Give exactly one of --model DIR or --run RUN to build a bundle.")
    templates = Path(templates)
    if not templates.is_dir():
        raise BundleError(f"Templates directory {templates} does not exist. Pass --templates with the directory of task YAML files.")
    source: dict[str, Any] = {}
    upstream_card = Path(model_card).read_text(encoding="utf-8") if model_card else None
    if run is not None:
        model_path, source = model_from_run(run, stage=stage, runs_dir=runs_dir)
        stage_card = Path(source["stage_dir"]) / CARD_NAME
        if upstream_card is None and stage_card.is_file():
            upstream_card = stage_card.read_text(encoding="utf-8")
    else:
        model_path = Path(model)  # type: ignore[arg-type]
        if not model_path.is_dir():
            raise BundleError(f"Model directory {model_path} does not exist.")
        source = {"model": str(model_path.resolve())}
    for cand in (model_path / CARD_NAME, model_path / "README.md"):
        if upstream_card is None and cand.is_file():
            upstream_card = cand.read_text(encoding="utf-8")
    for aname, adir in (adapters or {}).items():
        if not _ADAPTER_NAME.match(aname):
            raise BundleError(f"Adapter name {aname!r} must be letters, digits, '.', '_' or '-' (max 64).")
        if not is_adapter_dir(adir):
            raise BundleError(f"Adapter {aname!r}: {adir} is not a LoRA adapter directory (no adapter_config.json).")

    task_templates = _template_names(templates)  # validated at the source, so errors name the user's files
    out = Path(out)
    with atomic.atomic_dir(out) as staging:
        if is_adapter_dir(model_path):
            log.info("merging adapter %s into its base for the bundle", model_path)
            merge_adapter(model_path, staging / "model")
            kind = "merged"
        else:
            _copy_tree(model_path, staging / "model")
            kind = "base" if adapters else "full"
        if not (staging / "model" / "config.json").is_file():
            raise BundleError(f"{model_path} holds no model weights (no config.json); pass a model directory.")
        for aname, adir in (adapters or {}).items():
            _copy_tree(Path(adir), staging / "adapters" / aname)
        _copy_tree(templates, staging / "templates")
        meta: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "name": name or out.name,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "domain_lm_version": __version__,
            "model": "model",
            "model_kind": kind,
            "model_summary": _model_summary(staging / "model"),
            "adapters": {a: f"adapters/{a}" for a in (adapters or {})},
            "templates": "templates",
            "task_templates": task_templates,
            "source": source,
        }
        atomic.write_json(staging / METADATA_NAME, meta)
        (staging / CARD_NAME).write_text(_card(meta, upstream_card), encoding="utf-8")
        _readable(staging)
        digest = write_manifest(staging)
        if signing_key is not None:
            atomic.write_text(staging / SIGNATURE_NAME, signing.sign((staging / MANIFEST_NAME).read_bytes(), signing_key).to_json())
    trusted = {signing.key_id(signing_key.public_key()): signing_key.public_key()} if signing_key is not None else None
    return verify_bundle(out, manifest_sha256=digest, public_keys=trusted, allow_unsigned=signing_key is None)
