#!/usr/bin/env python3
"""Build an air-gapped wheelhouse: domain-lm's wheel plus every dependency, pinned, with hashes.

Run it on a connected build machine, inside the virtualenv that passed the tests (the pins are the
versions installed there, so what ships is what was tested)::

    .venv/bin/python deploy/offline/build_wheelhouse.py --extra cpu --out dist/wheelhouse

It writes into ``--out``:

    *.whl               the project's wheel and one wheel per dependency (sdist-only ones built here)
    requirements.lock   ``name==version --hash=sha256:...`` for every wheel (pip's hash-checking mode)
    SHA256SUMS          ``sha256sum`` list of every file, checked by install.sh before anything else
    install.sh          the installer for the target (a copy of deploy/offline/install.sh)

On the target: ``bash install.sh /path/to/wheelhouse /opt/domain-lm/venv``, which runs
``pip install --no-index --require-hashes``: a wheel whose bytes differ from the lock is refused.

Only the standard library and pip are used, so any Python 3.11+ with pip can run this file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROJECT = "domain-lm"


def canon(name: str) -> str:
    """PEP 503 normalised name (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _markers():
    # pip vendors `packaging`; prefer a standalone copy when installed.
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - depends on the build venv
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    return Requirement


def dependency_closure(root: str, extras: list[str], exclude: set[str] = frozenset()) -> dict[str, str]:
    """{canonical name: installed version} for ``root[extras]`` and everything it requires.

    Read from the installed distributions' metadata with markers evaluated for this interpreter
    and platform, so the result is exactly the environment that was tested.
    """
    Requirement = _markers()
    pins: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, tuple(extras))]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    missing: list[str] = []
    while todo:
        name, wanted_extras = todo.pop()
        key = (canon(name), wanted_extras)
        if key in seen or key[0] in exclude:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        pins[canon(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted_extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    if missing:
        raise SystemExit(
            f"error: these dependencies are not installed in {sys.prefix}: {', '.join(sorted(set(missing)))}. "
            "Build the wheelhouse from the virtualenv that passed the tests (make setup), or leave them out "
            "with --exclude (the CPU image leaves out torchvision torchaudio torchcodec)."
        )
    return pins


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_key(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel file name (``name-version-...-tag.whl``)."""
    name, version = filename.split("-")[:2]
    return canon(name), version


def clean_source(project: Path, dest: Path) -> Path:
    """Copy the project's files (git-tracked and untracked-but-not-ignored) to ``dest``.

    Building from a clean copy keeps a stale ``build/lib`` or local runs and model files out of the
    wheel; outside a git checkout the tree is copied as is.
    """
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=project, check=True, capture_output=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(project, dest, ignore=shutil.ignore_patterns(".venv", "build", "dist", "*.egg-info", "__pycache__"))
        return dest
    for rel in files:
        src = project / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Wheelhouse directory to write.")
    ap.add_argument("--project", type=Path, default=REPO, help="Project source tree (default: this repository).")
    ap.add_argument("--extra", action="append", default=[], help="Project extra to include (cpu, gpu); repeatable.")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="Partial wheelhouse: only these dependencies (the project wheel is always included).")
    ap.add_argument("--exclude", nargs="+", default=[], metavar="NAME",
                    help="Leave these dependencies (and what only they need) out, e.g. torchvision on CPU.")
    ap.add_argument("--find-links", action="append", default=[], help="Extra local wheel directory to take wheels from.")
    ap.add_argument("--no-index", action="store_true", help="Take dependency wheels only from --find-links.")
    args = ap.parse_args(argv)

    excluded = {canon(n) for n in args.exclude}
    pins = dependency_closure(PROJECT, args.extra, excluded)
    project_version = pins.pop(canon(PROJECT))
    if args.only is not None:
        only = {canon(n) for n in args.only}
        unknown = only - set(pins)
        if unknown:
            raise SystemExit(f"error: --only names are not dependencies of {PROJECT}: {', '.join(sorted(unknown))}")
        pins = {k: v for k, v in pins.items() if k in only}

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The project wheel: no build isolation, so no network is needed to fetch setuptools.
    with tempfile.TemporaryDirectory(prefix="domain-lm-src-") as tmp:
        src = clean_source(args.project.resolve(), Path(tmp) / "src")
        pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(src))
    if pins:
        src = [f"--find-links={d}" for d in args.find_links] + (["--no-index"] if args.no_index else [])
        # `pip wheel` saves the published wheel when there is one and builds a wheel from the sdist
        # when there is none (deepspeed publishes only an sdist), here on the build host, so the
        # target installs binaries only. No build isolation: sdists such as deepspeed's import torch
        # at build time, which this venv has.
        pip("wheel", "--no-deps", "--no-build-isolation", "--prefer-binary", "--wheel-dir", str(out), *src,
            *(f"{n}=={v}" for n, v in sorted(pins.items())))

    wanted = {canon(PROJECT): project_version, **pins}
    hashes: dict[str, list[str]] = {}
    for whl in sorted(out.glob("*.whl")):
        name, version = wheel_key(whl.name)
        # Local versions (torch 2.13.0+cpu) are kept as the wheel names them.
        if wanted.get(name) in (version, version.replace("_", "-")):
            hashes.setdefault(name, []).append(sha256(whl))
    absent = sorted(set(wanted) - set(hashes))
    if absent:
        raise SystemExit(f"error: no wheel was obtained for {', '.join(f'{n}=={wanted[n]}' for n in absent)}")

    lock = [f"# {PROJECT} {project_version} wheelhouse; install with install.sh (pip --no-index --require-hashes)\n"]
    if args.only is not None:
        lock.append("# PARTIAL: only a subset of the dependencies is included\n")
    if excluded:
        lock.append(f"# EXCLUDED: {' '.join(sorted(excluded))}\n")
    for name in sorted(hashes):
        lock.append(f"{name}=={wanted[name]} " + " ".join(f"--hash=sha256:{h}" for h in hashes[name]) + "\n")
    (out / "requirements.lock").write_text("".join(lock), encoding="utf-8")
    shutil.copyfile(HERE / "install.sh", out / "install.sh")
    sums = [f"{sha256(p)}  {p.name}\n" for p in sorted(out.iterdir()) if p.is_file() and p.name != "SHA256SUMS"]
    (out / "SHA256SUMS").write_text("".join(sums), encoding="utf-8")
    print(f"wheelhouse {out}: {len(hashes)} packages pinned with hashes in requirements.lock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
