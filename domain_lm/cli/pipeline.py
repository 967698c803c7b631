"""``domain-lm pipeline``: the whole run from one config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.table import Table

from domain_lm.cli.common import OverrideOpt, config_from, run_log
from domain_lm.core.progress import console

app = typer.Typer(no_args_is_help=True)

ConfigArg = Annotated[Optional[Path], typer.Argument(help="Pipeline YAML; omit for the embedded quick demo.")]


@app.command("run")
def run_cmd(
    config: ConfigArg = None,
    overrides: OverrideOpt = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Re-run this stage even if unchanged (repeatable).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Stop after this stage.")] = None,
    serve_demo: Annotated[
        bool, typer.Option("--serve-demo/--no-serve-demo", help="Then start the service and answer one request per task.")
    ] = False,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="Keep the service running after the demo requests.")] = False,
) -> None:
    """Run base import -> corpus -> pretrain -> SFT -> reward -> PPO/DPO -> eval, then the report."""
    from domain_lm.pipeline.run import final_model, preflight, run_pipeline
    from domain_lm.pipeline.store import Run

    cfg = config_from(config, overrides)
    preflight(cfg)  # a bad path or model fails here, before the run directory (and its log) exists
    with run_log(cfg) as log:
        run_pipeline(cfg, force=force, until=until)
        if serve_demo or keep_serving:
            from domain_lm.serve_demo import serve_and_answer

            run = Run.from_config(cfg)
            stage, model = final_model(run)
            console.print(f"[bold]serving[/] the {stage} model: {model}")
            serve_and_answer(cfg, model, keep_serving=keep_serving, log_path=run.root / "serve.log")
    if log is not None:
        console.print(f"[bold]log[/]: {log} (library and engine messages)", soft_wrap=True)


@app.command("status")
def status_cmd(
    config: ConfigArg = None,
    overrides: OverrideOpt = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="A run directory (instead of a config).")] = None,
) -> None:
    """Show the stages of a run, whether each is current, and what each produced."""
    from domain_lm.pipeline.graph import plan
    from domain_lm.pipeline.run import is_current
    from domain_lm.pipeline.store import Run

    cfg = None if run_dir else config_from(config, overrides)
    run = Run(run_dir) if run_dir else Run.from_config(cfg)
    names = plan(cfg) if cfg else [s.stage for s in run.stages()]
    table = Table("stage", "state", "duration", "metrics", "artefacts", title=f"run {run.root}")
    for name in names:
        r = run.load(name)
        staging = list(run.root.glob(f".{name}.tmp-*")) if run.root.is_dir() else []
        work = run.root / ".work" / name
        if r is None:
            state = "[yellow]interrupted (resumable)[/]" if staging or any(work.glob("checkpoint-*")) else "[dim]not run[/]"
            table.add_row(name, state, "", "", "")
            continue
        state = "[green]done[/]"
        if cfg is not None:
            try:
                if not is_current(name, cfg, run, r):
                    state = "[yellow]stale (inputs or config changed)[/]"
            except Exception:  # noqa: BLE001 - status must not fail on one stage
                pass
        shown = [(k, v) for k, v in list(r.metrics.items())[:4] if isinstance(v, (int, float))]
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)
        table.add_row(name, state, f"{r.finished_at - r.started_at:.0f}s", metrics, ", ".join(r.artefacts))
    console.print(table)
    for f in ("report.html", "report.md"):
        if (run.root / f).is_file():
            console.print(f"report: {run.root / f}")


@app.command("report")
def report_cmd(config: ConfigArg = None, overrides: OverrideOpt = None) -> None:
    """(Re)write runs/<run>/report.md and report.html from what the stages produced."""
    from domain_lm.pipeline.report import write_report
    from domain_lm.pipeline.store import Run

    cfg = config_from(config, overrides)
    console.print(f"report: {write_report(Run.from_config(cfg), cfg)}")


@app.command("show-config")
def show_config(config: ConfigArg = None, overrides: OverrideOpt = None) -> None:
    """Print the resolved config (profile defaults + file + overrides): every valid key."""
    cfg = config_from(config, overrides)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
