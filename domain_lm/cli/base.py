"""``domain-lm base``: the offline base-model store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from domain_lm.core.progress import console
from domain_lm.models import registry

app = typer.Typer(no_args_is_help=True)

StoreOpt = Annotated[Optional[Path], typer.Option("--store", help="Model store directory (default $DOMAIN_LM_HOME/models).")]


@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="smollm2-135m, gemma3-270m, a .gguf file or a Hugging Face model directory.")],
    store: StoreOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-import even if present.")] = False,
    as_name: Annotated[Optional[str], typer.Option("--as", help="Name in the store (default: derived).")] = None,
) -> None:
    """Import a base model into the local store as safetensors (idempotent, checksum-verified)."""
    with console.status(f"importing {name} ..."):
        m = registry.import_model(name, store=store, force=force, as_name=as_name)
    console.print(f"[green]ok[/] {m.name}: {m.params / 1e6:.1f}M parameters at {m.path} (source sha256 {m.source_sha256[:12]}…)")


@app.command("list")
def list_(store: StoreOpt = None) -> None:
    """List the models in the store, and the registry names that can be imported."""
    table = Table("name", "params", "path", "source")
    models = registry.list_models(store)
    for m in models:
        table.add_row(m.name, f"{m.params / 1e6:.1f}M", str(m.path), Path(m.source).name)
    console.print(table if models else "[dim]The model store is empty.[/]")
    console.print("Importable by name: " + ", ".join(f"{k} ({v.description})" for k, v in registry.KNOWN.items()))


@app.command("verify")
def verify(name: str, store: StoreOpt = None) -> None:
    """Re-hash a stored model's files against its import manifest."""
    path = registry.resolve(name, store=store, auto_import=False)
    console.print(f"[green]ok[/] {name} at {path} matches its checksums")
