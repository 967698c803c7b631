"""``domain-lm bundle``: build, sign, verify and serve offline model bundles (see ``domain_lm.bundle``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from domain_lm.core.progress import console
from domain_lm.errors import DomainLMError

app = typer.Typer(no_args_is_help=True)

Sha256Opt = Annotated[
    Optional[str],
    typer.Option(
        "--manifest-sha256", envvar="DOMAIN_LM_BUNDLE_SHA256", help="Expected SHA-256 of MANIFEST.sha256, as printed by `bundle build`."
    ),
]
PublicKeyOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--public-key", envvar="DOMAIN_LM_BUNDLE_PUBLIC_KEY", help="Trusted public key (PEM file, or a directory of them); repeatable."
    ),
]
AllowUnsignedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsigned", envvar="DOMAIN_LM_BUNDLE_ALLOW_UNSIGNED", help="Accept a bundle without a checked signature (development only)."
    ),
]


def _parse_adapters(items: Optional[list[str]]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DomainLMError(f"--adapter {item!r} must be NAME=DIR, e.g. --adapter sentiment=runs/demo/sft/adapter.")
        out[name] = Path(path)
    return out


def _verified(path: Path, manifest_sha256: str | None, public_key: list[Path] | None, allow_unsigned: bool):
    from domain_lm.bundle import verify_bundle
    from domain_lm.signing import load_public_keys

    trusted = load_public_keys(list(public_key or []))
    return verify_bundle(path, manifest_sha256=manifest_sha256, public_keys=trusted, allow_unsigned=allow_unsigned)


def _signed_note(info) -> str:
    return f"signed by key {info.signed_by}" if info.signed_by else "[yellow]NOT signature-checked[/] (--allow-unsigned)"


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for bundle-signing.key (private, 0600) and bundle-signing.pub.")],
) -> None:
    """Make an Ed25519 key pair for signing bundles (set DOMAIN_LM_SIGNING_PASSPHRASE to encrypt the private key)."""
    from domain_lm.signing import PASSPHRASE_ENV, generate_keypair

    passphrase = os.environ.get(PASSPHRASE_ENV)
    kid = generate_keypair(out / "bundle-signing.key", out / "bundle-signing.pub", passphrase.encode() if passphrase else None)
    console.print(
        f"[green]ok[/] key {kid}: keep {out / 'bundle-signing.key'} private; give {out / 'bundle-signing.pub'} to every server",
        highlight=False,
        soft_wrap=True,
    )


@app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (replaced atomically).")],
    templates: Annotated[Path, typer.Option("--templates", "-t", help="Task templates directory.")] = Path("task_templates"),
    model: Annotated[
        Optional[Path], typer.Option("--model", "-m", help="Model directory (an adapter directory is merged into its base).")
    ] = None,
    run: Annotated[
        Optional[str], typer.Option("--run", "-r", help="Run name under --runs-dir, or a run directory: bundles its final model.")
    ] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="With --run: take this stage's model instead of the last one.")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.")] = Path("runs"),
    adapter: Annotated[
        Optional[list[str]], typer.Option("--adapter", "-a", help="NAME=DIR: keep a LoRA adapter apart, served per request (repeatable).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Bundle name (default: the directory name).")] = None,
    model_card: Annotated[Optional[Path], typer.Option("--model-card", help="A model card to include (default: the run's).")] = None,
    sign_key: Annotated[
        Optional[Path], typer.Option("--sign-key", envvar="DOMAIN_LM_SIGNING_KEY", help="Private key to sign the bundle with.")
    ] = None,
) -> None:
    """Build a bundle: weights, adapters, templates, model card, a SHA-256 manifest over every file (signed with --sign-key)."""
    from domain_lm.bundle import build_bundle
    from domain_lm.signing import load_private_key

    key = load_private_key(sign_key) if sign_key else None
    with console.status("building bundle ..."):
        info = build_bundle(
            out,
            templates,
            model=model,
            run=run,
            stage=stage,
            runs_dir=runs_dir,
            adapters=_parse_adapters(adapter),
            name=name,
            model_card=model_card,
            signing_key=key,
        )
    console.print(
        f"[green]ok[/] bundle {info.metadata['name']} at {info.root}: {info.files} files, model {info.metadata['model_kind']}, "
        f"{len(info.adapters)} adapter(s), {len(info.metadata['task_templates'])} template(s); "
        + (f"signed by key {info.signed_by}" if info.signed_by else "unsigned: sign it with `domain-lm bundle sign`"),
        highlight=False,
        soft_wrap=True,
    )
    console.print("manifest sha256 (pin it: `bundle verify --manifest-sha256`), printed on stdout:", highlight=False, soft_wrap=True)
    typer.echo(info.manifest_sha256)  # stdout, so scripts can do SHA=$(domain-lm bundle build ...)


@app.command("sign")
def sign(
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    key: Annotated[Path, typer.Option("--key", "-k", envvar="DOMAIN_LM_SIGNING_KEY", help="Private key (from `bundle keygen`).")],
) -> None:
    """Sign a bundle's manifest (writes MANIFEST.sha256.sig); its files are checked against the manifest first."""
    from domain_lm.bundle import sign_bundle
    from domain_lm.signing import load_private_key

    kid = sign_bundle(path, load_private_key(key))
    console.print(f"[green]ok[/] bundle {path} signed by key {kid}", highlight=False, soft_wrap=True)


@app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    manifest_sha256: Sha256Opt = None,
    public_key: PublicKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
) -> None:
    """Check the signature and re-hash every file against MANIFEST.sha256; exit 2 naming the problem."""
    info = _verified(path, manifest_sha256, public_key, allow_unsigned)
    console.print(
        f"[green]ok[/] bundle {info.root}: {info.files} files match MANIFEST.sha256 (sha256 {info.manifest_sha256}), {_signed_note(info)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    manifest_sha256: Sha256Opt = None,
    public_key: PublicKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
    templates: Annotated[
        Optional[Path], typer.Option("--templates", help="Serve these templates instead of the bundle's (e.g. a Kubernetes ConfigMap).")
    ] = None,
) -> None:
    """Verify a bundle (signature and hashes), then run `domain-lm serve` on its model, adapters and templates.

    Extra options go to `domain-lm serve`, e.g. `domain-lm bundle serve /srv/bundle --engine hf --port 8000
    --template-store /var/lib/domain-lm/templates`. Nothing is served from a bundle that fails verification.
    """
    info = _verified(path, manifest_sha256, public_key, allow_unsigned)
    console.print(
        f"[green]verified[/] {info.root} ({info.files} files, {_signed_note(info)}); starting the service", highlight=False, soft_wrap=True
    )
    argv = [sys.executable, "-m", "domain_lm", "serve", "--model", str(info.model_dir), "--templates", str(templates or info.templates_dir)]
    for aname, adir in info.adapters.items():
        argv += ["--adapter", f"{aname}={adir}"]
    argv += list(ctx.args)
    sys.stdout.flush()
    # exec, not a child process: the service gets our PID, so systemd/docker signals reach it directly.
    os.execv(sys.executable, argv)
