"""The main job: base import -> corpus -> continued pretraining -> SFT -> reward -> PPO (or DPO)
-> evaluation -> report -> serve, each stage skipped when its inputs and config are unchanged and
resumed from its checkpoints after a kill."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from domain_lm.config import CorpusSource, PipelineConfig
from domain_lm.errors import ConfigError, DataError
from domain_lm.models import registry
from domain_lm.progress import console, display
from domain_lm.runstore import Run, StageResult


def plan(config: PipelineConfig) -> list[str]:
    """The stages this config runs, in order."""
    stages = ["base"]
    if config.pretrain.enabled:
        stages += ["corpus", "pretrain"]
    if config.sft.enabled:
        stages.append("sft")
    if config.ppo.enabled:
        stages += {"ppo": ["reward", "ppo"], "dpo": ["dpo"], "both": ["reward", "ppo", "dpo"]}[config.ppo.algorithm]
    if config.eval.enabled:
        stages.append("eval")
    return stages


def _check_source(kind: str, src: CorpusSource | str) -> None:
    path = Path(src.path if isinstance(src, CorpusSource) else src)
    if not path.exists():
        raise DataError(f"The {kind} path {path} does not exist. Fix the path in the config (or remove the entry); nothing was written.")
    try:
        if path.is_dir():
            next(iter(path.iterdir()), None)
        else:
            with path.open("rb") as f:
                f.read(1)
    except OSError as e:
        raise DataError(f"The {kind} path {path} is not readable ({e.strerror}). Check its permissions; nothing was written.") from None


def preflight(config: PipelineConfig) -> None:
    """Fail fast, before anything is written: base model, data paths, templates."""
    name = config.base_model.name
    store = Path(config.base_model.store) if config.base_model.store else None
    try:
        registry.resolve(name, store=store, auto_import=False)
    except Exception:  # noqa: BLE001 - not imported yet: check it can be
        registry._source_for(name)  # noqa: SLF001 - raises ModelNotFoundError with the fix
    for src in config.corpus.sources:
        _check_source("corpus source", src)
    for src in config.corpus.general_sources:
        _check_source("general corpus source", src)
    for ds in config.tasks.datasets:
        if ds.path:
            _check_source(f"task dataset ({ds.task})", ds.path)
    for p in config.reward.preference_sources:
        _check_source("preference data", p)
    if not Path(config.tasks.templates_dir).is_dir():
        raise ConfigError(f"Key 'tasks.templates_dir': {config.tasks.templates_dir} is not a directory of task templates.")


@dataclass
class StageOutcome:
    stage: str
    result: StageResult
    skipped: bool
    seconds: float


def run_pipeline(config: PipelineConfig, force: list[str] | None = None, until: str | None = None) -> list[StageOutcome]:
    """Run every planned stage (resuming where a previous run stopped) and write the report."""
    from domain_lm.report import write_report
    from domain_lm.stages import run_stage

    preflight(config)
    stages = plan(config)
    if until is not None:
        if until not in stages:
            raise ConfigError(f"--until {until!r} is not a stage of this run; stages: {', '.join(stages)}.")
        stages = stages[: stages.index(until) + 1]
    force = force or []
    outcomes: list[StageOutcome] = []
    console.print(f"[bold]domain-lm pipeline[/] run [cyan]{config.run.name}[/] ({config.profile} profile): {' -> '.join(stages)}")
    with display() as progress:
        overall = progress.add_task("pipeline", total=len(stages))
        for name in stages:
            progress.update(overall, description=f"pipeline: {name}")
            t0 = time.time()
            result, skipped = run_stage(name, config, resume=True, force=name in force)
            outcomes.append(StageOutcome(name, result, skipped, time.time() - t0))
            console.print(summary_line(outcomes[-1]))
            progress.advance(overall)
    report = write_report(Run.from_config(config), config)
    console.print(f"[bold]report[/]: {report}")
    return outcomes


def summary_line(o: StageOutcome) -> str:
    state = "[dim]unchanged, reused[/]" if o.skipped else f"done in {o.seconds:.0f}s"
    keys = [k for k, v in o.result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:5]
    metrics = ", ".join(f"{k}={o.result.metrics[k]:.4g}" for k in keys)
    return f"  [green]✓[/] [bold]{o.stage:<9}[/] {state}" + (f"  {metrics}" if metrics else "")


def final_model(run: Run) -> tuple[str, Path] | None:
    """The most refined model a run produced (rlhf > sft > pretrain > base)."""
    for stage in ("ppo", "dpo", "sft", "pretrain", "base"):
        r = run.load(stage)
        if r is not None and r.has("model"):
            return stage, r.artefact("model")
    return None
