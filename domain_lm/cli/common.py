"""Options shared by the stage commands, and the run log that keeps their console quiet."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from domain_lm.config import PipelineConfig, load_config

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline YAML; default: the embedded quick demo.")]
OverrideOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key, e.g. -s sft.train.max_steps=10.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this stage.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-run even if inputs and config are unchanged.")]


def config_from(config: Optional[Path], overrides: Optional[list[str]]) -> PipelineConfig:
    return load_config(config, overrides or [])


#: The run's log file (inside the run directory): library warnings, other libraries' progress bars,
#: vLLM's engine output; the console shows only progress, results and errors.
RUN_LOG = "pipeline.log"


def verbose() -> bool:
    """``DOMAIN_LM_LOG=INFO`` (or ``DEBUG``) shows library output on the console again, as it comes."""
    return os.environ.get("DOMAIN_LM_LOG", "").upper() in ("INFO", "DEBUG")


@contextmanager
def run_log(config: PipelineConfig) -> Iterator[Path | None]:
    """Everything but the console goes to ``runs/<run>/pipeline.log`` while the block runs (None
    and no redirection when ``verbose()``)."""
    from domain_lm.core.progress import capture_output
    from domain_lm.pipeline.store import Run

    if verbose():
        yield None
        return
    with capture_output(Run.from_config(config).root / RUN_LOG) as path:
        os.write(2, f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} domain-lm {' '.join(sys.argv[1:])}\n".encode())
        yield path


def run_stage_command(
    stage: str, config: Optional[Path], overrides: Optional[list[str]], resume: bool = False, force: bool = False
) -> None:
    """Run one stage through the run store and print its summary line."""
    from domain_lm.core.progress import console
    from domain_lm.pipeline.run import run_stage

    cfg = config_from(config, overrides)
    with run_log(cfg):
        result, skipped = run_stage(stage, cfg, resume=resume, force=force)
    state = "unchanged, reused" if skipped else f"done in {result.finished_at - result.started_at:.1f}s"
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(shown.items())[:8])
    console.print(f"[bold green]{stage}[/]: {state} -> {result.path}" + (f"  ({metrics})" if metrics else ""))


def stage_app(stage: str, help_text: str) -> typer.Typer:
    """The typer app of a stage command: ``domain-lm <stage> -c run.yaml [--resume] [--force]`` runs
    the stage; subcommands (e.g. ``domain-lm sft build``) can be added to the returned app."""
    app = typer.Typer()

    @app.callback(invoke_without_command=True, help=help_text)
    def run(
        ctx: typer.Context, config: ConfigOpt = None, overrides: OverrideOpt = None, resume: ResumeOpt = False, force: ForceOpt = False
    ) -> None:
        if ctx.invoked_subcommand is None:
            run_stage_command(stage, config, overrides, resume=resume, force=force)

    return app
