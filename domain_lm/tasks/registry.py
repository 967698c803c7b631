"""``TemplateRegistry``: every loaded version of every task, swapped atomically on change.

Readers never lock: the registry holds one immutable snapshot (read-only mappings of frozen
``TaskTemplate`` objects) and replaces the whole snapshot when templates are registered or the
directory changes. A request that already fetched a template keeps using that exact version.

Directory layout (``persist_dir``)::

    task_templates/<name>.yaml                   the current version of each task
    task_templates/.versions/<name>@<v>.yaml     every version ever registered (history)
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from domain_lm.atomic import write_text
from domain_lm.tasks.errors import TemplateError, UnknownTaskError
from domain_lm.tasks.template import TaskTemplate
from domain_lm.tasks.yamlsrc import SourceMap, load_yaml

HISTORY_DIR = ".versions"
#: The file name errors show for a template registered at run time (not read from a file).
REGISTERED = "<registered>"
_SUFFIXES = (".yaml", ".yml")


class TemplateErrors(TemplateError):
    """Several template files are broken; ``errors`` holds one ``TemplateError`` per problem."""

    def __init__(self, errors: list[TemplateError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} template problem(s):\n{lines}", first.file, first.line)

    def __str__(self) -> str:
        return f"{len(self.errors)} template problem(s):\n" + "\n".join(f"  {e}" for e in self.errors)


@dataclass(frozen=True)
class _Snapshot:
    versions: Mapping[str, Mapping[int, TaskTemplate]] = field(default_factory=lambda: MappingProxyType({}))
    current: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    errors: tuple[TemplateError, ...] = ()


def _freeze(versions: dict[str, dict[int, TaskTemplate]], current: dict[str, int], errors: list[TemplateError]) -> _Snapshot:
    return _Snapshot(
        versions=MappingProxyType({n: MappingProxyType(dict(sorted(v.items()))) for n, v in sorted(versions.items())}),
        current=MappingProxyType(dict(sorted(current.items()))),
        errors=tuple(errors),
    )


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(path, mtime, size, inode) of every template file: a stat per file, no reads.

    The inode catches an atomic replace (write + rename) that lands in the same mtime tick.
    """
    files = []
    for sub in (directory, directory / HISTORY_DIR):
        if sub.is_dir():
            for p in sub.iterdir():
                if p.suffix in _SUFFIXES and p.is_file():
                    st = p.stat()
                    files.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sorted(files))


def _persisted_text(source: Any, template: TaskTemplate) -> str:
    """The file to write: the submitted YAML (comments kept) with its version, or a clean dump."""
    if isinstance(source, str):
        text = source
        if not re.search(r"^version\s*:", source, re.MULTILINE):
            text, n = re.subn(r"^(name\s*:.*\n)", rf"\g<1>version: {template.version}\n", source, count=1, flags=re.MULTILINE)
            if n != 1:
                return template.to_yaml()
        try:
            if TaskTemplate.from_yaml(text).fingerprint == template.fingerprint:
                return text
        except TemplateError:
            pass
    return template.to_yaml()


class TemplateRegistry:
    """Task templates by name and version. Thread-safe; reads are lock-free."""

    def __init__(self, templates: list[TaskTemplate] | tuple[TaskTemplate, ...] = (), directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.RLock()
        self._seen: tuple[tuple[str, int, int, int], ...] = ()
        self._parsed: dict[tuple[str, int, int, int], TaskTemplate | TemplateError] = {}
        versions: dict[str, dict[int, TaskTemplate]] = {}
        current: dict[str, int] = {}
        for t in templates:
            versions.setdefault(t.name, {})[t.version] = t
            current[t.name] = max(current.get(t.name, 0), t.version)
        self._snap = _freeze(versions, current, [])

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, directory: str | Path, strict: bool = True) -> "TemplateRegistry":
        """Load every template in ``directory`` (current files plus ``.versions/`` history).

        ``strict`` (default) raises ``TemplateError`` (``TemplateErrors`` if several) naming
        file and line when any file is broken; otherwise broken files are skipped and listed in
        ``registry.errors``.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise TemplateError(f"template directory {directory} does not exist", str(directory))
        reg = cls(directory=directory)
        reg._scan(force=True)
        if strict and reg.errors:
            raise reg.errors[0] if len(reg.errors) == 1 else TemplateErrors(list(reg.errors))
        return reg

    def reload_if_changed(self) -> bool:
        """Re-read the directory if any template file was added, changed or removed (mtime/size scan).

        Never raises for a broken file: the good templates (and the last good version of the
        broken one) stay served, and the problem is listed in ``errors``. Returns True when the
        directory changed.
        """
        if self.directory is None:
            return False
        return self._scan(force=False)

    def _parse(self, path: Path, key: tuple[str, int, int, int]) -> TaskTemplate | TemplateError:
        if key not in self._parsed:
            try:
                self._parsed[key] = TaskTemplate.from_yaml(path.read_text(encoding="utf-8"), str(path))
            except TemplateError as e:
                self._parsed[key] = e
            except (OSError, UnicodeDecodeError) as e:
                self._parsed[key] = TemplateError(f"cannot read template: {e}", str(path))
        return self._parsed[key]

    def _scan(self, force: bool) -> bool:
        if self.directory is None:
            return False
        with self._lock:
            seen = _fingerprint(self.directory) if self.directory.is_dir() else ()
            if seen == self._seen and not force:
                return False
            old = self._snap
            versions = {n: dict(v) for n, v in old.versions.items()}  # keep every version ever loaded
            current: dict[str, int] = {}
            errors: list[TemplateError] = []
            history_dir = str(self.directory / HISTORY_DIR)
            for key in seen:
                path = Path(key[0])
                is_history = str(path.parent) == history_dir
                got = self._parse(path, key)
                expected = path.stem.split("@")[0]
                if isinstance(got, TemplateError):
                    errors.append(got)
                    if not is_history and expected in old.current:
                        current[expected] = old.current[expected]  # keep serving the last good version
                    continue
                if got.name != expected or (is_history and path.stem != f"{got.name}@{got.version}"):
                    want = f"{got.name}@{got.version}.yaml" if is_history else f"{got.name}.yaml"
                    errors.append(got._err(("name",), f"file name must be {want} for template {got.name!r} version {got.version}"))
                    continue
                if not is_history:
                    current[got.name] = got.version
                    versions.setdefault(got.name, {})[got.version] = got  # the current file wins over history
                else:
                    versions.setdefault(got.name, {}).setdefault(got.version, got)
            keep = set(seen)
            self._parsed = {k: v for k, v in self._parsed.items() if k in keep}  # forget replaced files
            self._seen = seen
            self._snap = _freeze(versions, current, errors)
            return True

    # ------------------------------------------------------------------ reading

    @property
    def errors(self) -> tuple[TemplateError, ...]:
        """Problems found by the last directory scan (broken files that were skipped)."""
        return self._snap.errors

    def names(self) -> list[str]:
        return list(self._snap.current)

    def versions(self, name: str) -> list[int]:
        snap = self._snap
        if name not in snap.versions:
            raise UnknownTaskError(name, known=list(snap.current))
        return list(snap.versions[name])

    def get(self, name: str, version: int | None = None) -> TaskTemplate:
        """The current version of ``name`` (or an exact ``version``, including old ones)."""
        snap = self._snap
        if version is None:
            if name not in snap.current:
                raise UnknownTaskError(name, known=list(snap.current))
            version = snap.current[name]
        try:
            return snap.versions[name][version]
        except KeyError:
            raise UnknownTaskError(name, version, known=list(snap.current)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._snap.current

    def __iter__(self) -> Iterator[TaskTemplate]:
        snap = self._snap
        return iter([snap.versions[n][v] for n, v in snap.current.items()])

    def __len__(self) -> int:
        return len(self._snap.current)

    # ------------------------------------------------------------------ run-time updates

    def register(self, source: str | TaskTemplate | dict[str, Any], persist_dir: str | Path | None = None) -> TaskTemplate:
        """Validate and add a new version of a task; return it.

        ``source`` is YAML text, a dict, or a ``TaskTemplate``. Without a ``version`` the next
        one is assigned; an explicit version must be higher than the current one (re-registering
        the identical current template is a no-op that returns it). With ``persist_dir`` (default:
        the registry's directory) the template is written atomically to ``.versions/<name>@<v>.yaml``
        and then ``<name>.yaml``. Older versions stay available through ``get(name, version)``.
        """
        with self._lock:
            data, src = self._as_dict(source)
            name = data.get("name")
            snap = self._snap
            known = snap.versions.get(name) if isinstance(name, str) else None
            latest = snap.current.get(name) or (max(known) if known else None)
            if data.get("version") is None:
                data = {**data, "version": (latest or 0) + 1}
            template = TaskTemplate.from_dict(data, src)
            if latest is not None and template.version <= latest:
                existing = (known or {}).get(template.version)
                if template.version == latest and existing is not None and existing.fingerprint == template.fingerprint:
                    return existing  # idempotent re-registration of the current template
                raise src.error(("version",), f"task {template.name!r} is at version {latest}; a new template must have a higher version (or omit `version`)")
            target = Path(persist_dir) if persist_dir is not None else self.directory
            if target is not None:
                previous = (known or {}).get(latest) if latest is not None else None
                history = target / HISTORY_DIR / f"{template.name}@{latest}.yaml"
                if previous is not None and not history.exists():
                    write_text(history, previous.to_yaml())  # so the old version survives a restart
                text = _persisted_text(source, template)
                write_text(target / HISTORY_DIR / f"{template.name}@{template.version}.yaml", text)
                write_text(target / f"{template.name}.yaml", text)
            versions = {n: dict(v) for n, v in snap.versions.items()}
            versions.setdefault(template.name, {})[template.version] = template
            current = {**snap.current, template.name: template.version}
            self._snap = _freeze(versions, current, list(snap.errors))
            return template

    @staticmethod
    def _as_dict(source: str | TaskTemplate | dict[str, Any]) -> tuple[dict[str, Any], SourceMap]:
        if isinstance(source, TaskTemplate):
            return source.to_dict(), SourceMap(file=source.file)
        if isinstance(source, dict):
            return dict(source), SourceMap(file=REGISTERED)
        if isinstance(source, str):
            data, src = load_yaml(source, REGISTERED)
            if not isinstance(data, dict):
                raise TemplateError("a template must be a YAML mapping (name, description, inputs, output, prompts, ...)", REGISTERED, 1)
            return data, src
        raise TemplateError(f"cannot register a {type(source).__name__}; give YAML text, a dict or a TaskTemplate", REGISTERED)
