"""``domain-lm corpus build``: clean, dedupe, scrub PII, chunk and pack the domain corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from domain_lm.cli.common import ConfigOpt, ForceOpt, OverrideOpt, config_from, run_stage_command
from domain_lm.core.progress import console
from domain_lm.errors import DataError

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build(
    config: ConfigOpt = None,
    overrides: OverrideOpt = None,
    source: Annotated[
        Optional[list[Path]], typer.Option("--source", help="File or directory of documents (repeatable); replaces corpus.sources.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the corpus here (standalone) instead of into the run.")] = None,
    force: ForceOpt = False,
) -> None:
    """Build the corpus: into the run's `corpus` stage, or into --out on its own."""
    items = list(overrides or [])
    if source:
        items.append("corpus.sources=" + json.dumps([{"path": str(p)} for p in source]))
    if out is None:
        run_stage_command("corpus", config, items, force=force)
        return
    from domain_lm.data.corpus import build_corpus_cached
    from domain_lm.data.corpus_sources import with_default_sources
    from domain_lm.models import registry
    from domain_lm.models.loading import load_tokenizer

    cfg = config_from(config, items)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"Output directory {out} is not empty. Choose a new --out directory or empty it.")
    from domain_lm.data.extract import check_sources

    check_sources(list(cfg.corpus.sources) + list(cfg.corpus.general_sources))  # bad path: fail before writing
    tokenizer = load_tokenizer(registry.resolve(cfg.base_model.name, store=cfg.base_model.store))
    out.mkdir(parents=True, exist_ok=True)
    section = with_default_sources(cfg.corpus, out / ".sources")
    report, cached = build_corpus_cached(section, tokenizer, out)
    d = report["domain"]
    console.print(
        f"[bold green]corpus[/]: {'cached' if cached else 'built'} -> {out}  (docs {d['docs_in']} in / {d['docs_out']} out, "
        f"duplicates {d['duplicates_exact']} exact + {d['duplicates_near']} near, PII hits {sum(d['pii_hits'].values())}, "
        f"blocks {d['blocks_train']} train / {d['blocks_heldout']} held-out)"
    )
