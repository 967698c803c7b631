"""``domain-lm bundle``: build, verify and serve offline model bundles (see ``domain_lm.bundle``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from domain_lm.errors import DomainLMError
from domain_lm.progress import console

app = typer.Typer(no_args_is_help=True)

Sha256Opt = Annotated[
    Optional[str],
    typer.Option("--manifest-sha256", envvar="DOMAIN_LM_BUNDLE_SHA256", help="Expected SHA-256 of MANIFEST.sha256, as printed by `bundle build`."),
]


def _parse_adapters(items: Optional[list[str]]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DomainLMError(f"--adapter {item!r} must be NAME=DIR, e.g. --adapter sentiment=runs/demo/sft/adapter.")
        out[name] = Path(path)
    return out


@app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (replaced atomically).")],
    templates: Annotated[Path, typer.Option("--templates", "-t", help="Task templates directory.")] = Path("task_templates"),
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model directory (an adapter directory is merged into its base).")] = None,
    run: Annotated[Optional[str], typer.Option("--run", "-r", help="Run name under --runs-dir, or a run directory: bundles its final model.")] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="With --run: take this stage's model instead of the last one.")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.")] = Path("runs"),
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", "-a", help="NAME=DIR: keep a LoRA adapter apart, served per request (repeatable).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Bundle name (default: the directory name).")] = None,
    model_card: Annotated[Optional[Path], typer.Option("--model-card", help="A model card to include (default: the run's).")] = None,
) -> None:
    """Build a bundle: weights, adapters, templates, model card and a SHA-256 manifest over every file."""
    from domain_lm.bundle import build_bundle

    with console.status("building bundle ..."):
        info = build_bundle(
            out, templates, model=model, run=run, stage=stage, runs_dir=runs_dir,
            adapters=_parse_adapters(adapter), name=name, model_card=model_card,
        )
    console.print(f"[green]ok[/] bundle {info.metadata['name']} at {info.root}: {info.files} files, model {info.metadata['model_kind']}, "
                  f"{len(info.adapters)} adapter(s), {len(info.metadata['task_templates'])} template(s)")
    console.print("manifest sha256 (pin it: `bundle verify --manifest-sha256`), printed on stdout:", highlight=False, soft_wrap=True)
    typer.echo(info.manifest_sha256)  # stdout, so scripts can do SHA=$(domain-lm bundle build ...)


@app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    manifest_sha256: Sha256Opt = None,
) -> None:
    """Re-hash every file against MANIFEST.sha256; exit 2 naming the file if anything changed."""
    from domain_lm.bundle import verify_bundle

    info = verify_bundle(path, manifest_sha256=manifest_sha256)
    console.print(f"[green]ok[/] bundle {info.root}: {info.files} files match MANIFEST.sha256 (sha256 {info.manifest_sha256})", highlight=False, soft_wrap=True)


@app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    manifest_sha256: Sha256Opt = None,
    templates: Annotated[Optional[Path], typer.Option("--templates", help="Serve these templates instead of the bundle's (e.g. a Kubernetes ConfigMap).")] = None,
) -> None:
    """Verify a bundle, then run `domain-lm serve` on its model, adapters and templates.

    Extra options go to `domain-lm serve`, e.g. `domain-lm bundle serve /srv/bundle --engine hf --port 8000`.
    Nothing is served from a bundle that fails verification.
    """
    from domain_lm.bundle import verify_bundle

    info = verify_bundle(path, manifest_sha256=manifest_sha256)
    console.print(f"[green]verified[/] {info.root} ({info.files} files); starting the service", highlight=False, soft_wrap=True)
    argv = [sys.executable, "-m", "domain_lm", "serve", "--model", str(info.model_dir), "--templates", str(templates or info.templates_dir)]
    for aname, adir in info.adapters.items():
        argv += ["--adapter", f"{aname}={adir}"]
    argv += list(ctx.args)
    sys.stdout.flush()
    # exec, not a child process: the service gets our PID, so systemd/docker signals reach it directly.
    os.execv(sys.executable, argv)
