"""``TemplateRegistry``: every loaded version of every task, swapped atomically on change.

Readers never lock: the registry holds one immutable snapshot (read-only mappings of frozen
``TaskTemplate`` objects) and replaces the whole snapshot when templates are registered or the
directory changes. A request that already fetched a template keeps using that exact version.

Sources, all scanned for changes (a stat per file)::

    task_templates/<name>.yaml                   a task as authored (read-only to the registry)
    task_templates/.versions/<name>@<v>.yaml     versions registered at run time (the default store)
    <store>/<name>@<v>.yaml                      or a separate store (``store=``), e.g. a persistent
                                                 volume every replica shares

A task's current version is the highest one found in any source. ``register`` never edits the
authored file: it writes one new immutable file into the store (``domain_lm.tasks.store``).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from domain_lm.tasks.errors import TemplateError, UnknownTaskError
from domain_lm.tasks.store import TemplateStore, VersionTaken
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


_Key = tuple[str, int, int, int]


def _stat_key(p: Path) -> _Key | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (str(p), st.st_mtime_ns, st.st_size, st.st_ino)


def _fingerprint(dirs: list[Path]) -> tuple[_Key, ...]:
    """(path, mtime, size, inode) of every template file: a stat per file, no reads.

    The inode catches an atomic replace (write + rename) that lands in the same mtime tick.
    """
    files = []
    for sub in dirs:
        if sub.is_dir():
            for p in sub.iterdir():
                if p.suffix in _SUFFIXES and not p.name.startswith(".") and p.is_file() and (key := _stat_key(p)) is not None:
                    files.append(key)
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

    def __init__(
        self,
        templates: list[TaskTemplate] | tuple[TaskTemplate, ...] = (),
        directory: str | Path | None = None,
        store: TemplateStore | str | Path | None = None,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        if store is not None and not isinstance(store, TemplateStore):
            store = TemplateStore(store)
        if store is None and self.directory is not None:
            store = TemplateStore(self.directory / HISTORY_DIR)
        self.store: TemplateStore | None = store
        self.read_only = read_only
        self._lock = threading.RLock()
        self._seen: tuple[_Key, ...] = ()
        self._parsed: dict[_Key, TaskTemplate | TemplateError] = {}
        versions: dict[str, dict[int, TaskTemplate]] = {}
        current: dict[str, int] = {}
        for t in templates:
            versions.setdefault(t.name, {})[t.version] = t
            current[t.name] = max(current.get(t.name, 0), t.version)
        self._snap = _freeze(versions, current, [])

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls, directory: str | Path, strict: bool = True, store: TemplateStore | str | Path | None = None, read_only: bool = False
    ) -> "TemplateRegistry":
        """Load every template in ``directory`` (authored files plus ``.versions/``) and in ``store``.

        ``strict`` (default) raises ``TemplateError`` (``TemplateErrors`` if several) naming
        file and line when any file is broken; otherwise broken files are skipped and listed in
        ``registry.errors``. ``read_only`` refuses ``register`` (a bundle without a store).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise TemplateError(f"template directory {directory} does not exist", str(directory))
        reg = cls(directory=directory, store=store, read_only=read_only)
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
        return self._scan(force=False)

    @property
    def writable(self) -> bool:
        """``register`` persists new versions (a store is configured and registration is allowed)."""
        return self.store is not None and not self.read_only

    def _version_dirs(self) -> list[Path]:
        dirs = [self.directory / HISTORY_DIR] if self.directory is not None else []
        if self.store is not None and self.store.root not in dirs:
            dirs.append(self.store.root)
        return dirs

    def _parse(self, path: Path, key: _Key) -> TaskTemplate | TemplateError:
        if key not in self._parsed:
            try:
                self._parsed[key] = TaskTemplate.from_yaml(path.read_text(encoding="utf-8"), str(path))
            except TemplateError as e:
                self._parsed[key] = e
            except (OSError, UnicodeDecodeError) as e:
                self._parsed[key] = TemplateError(f"cannot read template: {e}", str(path))
        return self._parsed[key]

    def _scan(self, force: bool) -> bool:
        if self.directory is None and self.store is None:
            return False
        with self._lock:
            seen = _fingerprint(([self.directory] if self.directory is not None else []) + self._version_dirs())
            if seen == self._seen and not force:
                return False
            old = self._snap
            versions = {n: dict(v) for n, v in old.versions.items()}  # keep every version ever loaded
            current: dict[str, int] = {}
            errors: list[TemplateError] = []
            authored = str(self.directory) if self.directory is not None else None
            # Authored files first (they name the task), then every registered version file.
            for key in sorted(seen, key=lambda k: str(Path(k[0]).parent) != authored):
                path = Path(key[0])
                is_version = str(path.parent) != authored
                got = self._parse(path, key)
                expected = path.stem.split("@")[0]
                if isinstance(got, TemplateError):
                    errors.append(got)
                    if not is_version and expected in old.current:
                        current[expected] = old.current[expected]  # keep serving the last good version
                    continue
                if got.name != expected or (is_version and path.stem != f"{got.name}@{got.version}"):
                    want = f"{got.name}@{got.version}.yaml" if is_version else f"{got.name}.yaml"
                    errors.append(got._err(("name",), f"file name must be {want} for template {got.name!r} version {got.version}"))
                    continue
                if not is_version:
                    versions.setdefault(got.name, {})[got.version] = got  # the authored file wins over a copy
                else:
                    versions.setdefault(got.name, {}).setdefault(got.version, got)
                current[got.name] = max(current.get(got.name, 0), got.version)
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

    def register(
        self,
        source: str | TaskTemplate | dict[str, Any],
        author: str = "api",
        request_id: str | None = None,
        default_name: str | None = None,
    ) -> TaskTemplate:
        """Validate and add a new version of a task; return it.

        ``source`` is YAML text, a dict, or a ``TaskTemplate`` (``default_name`` fills a missing
        ``name``). Without a ``version`` the next one is assigned; an explicit version must be
        higher than the current one (re-registering the identical current template is a no-op that
        returns it). With a store (the default when the registry has a directory) the version is
        written there in one step, with ``author`` and ``request_id`` in its audit line. If another
        writer took the number meanwhile, an unversioned template gets the next free one.
        Older versions stay available through ``get(name, version)``.
        """
        if self.read_only:
            raise TemplateError(
                "run-time registration is off: these templates are read-only (a verified bundle's); "
                "give the service a writable template store (--template-store / DOMAIN_LM_TEMPLATE_STORE)",
                REGISTERED,
            )
        with self._lock:
            for _ in range(5):
                try:
                    return self._register_once(source, author, request_id, default_name)
                except VersionTaken:
                    self._scan(force=True)  # another replica wrote that version: see it, then retry
                    data, _ = self._as_dict(source, default_name)
                    if data.get("version") is not None:
                        raise
            raise TemplateError("could not find a free version number; retry", REGISTERED)

    def _register_once(self, source: Any, author: str, request_id: str | None, default_name: str | None) -> TaskTemplate:
        data, src = self._as_dict(source, default_name)
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
            raise src.error(
                ("version",),
                f"task {template.name!r} is at version {latest}; a new template must have a higher version (or omit `version`)",
            )
        if self.store is not None:
            path = self.store.write(template.name, template.version, _persisted_text(source, template), author, request_id)
            if (key := _stat_key(path)) is not None:
                self._parsed[key] = template  # the next scan finds this file already compiled
        versions = {n: dict(v) for n, v in snap.versions.items()}
        versions.setdefault(template.name, {})[template.version] = template
        current = {**snap.current, template.name: template.version}
        self._snap = _freeze(versions, current, list(snap.errors))
        return template

    @staticmethod
    def _as_dict(source: str | TaskTemplate | dict[str, Any], default_name: str | None = None) -> tuple[dict[str, Any], SourceMap]:
        if isinstance(source, TaskTemplate):
            return source.to_dict(), SourceMap(file=source.file)
        if isinstance(source, dict):
            data = dict(source)
            if default_name is not None:
                data.setdefault("name", default_name)
            return data, SourceMap(file=REGISTERED)
        if isinstance(source, str):
            data, src = load_yaml(source, REGISTERED)
            if not isinstance(data, dict):
                raise TemplateError("a template must be a YAML mapping (name, description, inputs, output, prompts, ...)", REGISTERED, 1)
            if default_name is not None and "name" not in data:
                data = {**data, "name": default_name}
            return data, src
        raise TemplateError(f"cannot register a {type(source).__name__}; give YAML text, a dict or a TaskTemplate", REGISTERED)
