"""Run one stage or the whole pipeline: fingerprints, skip when unchanged, resume after a kill.

A stage's fingerprint hashes its config sections, the fingerprints of the upstream results it
reads and the content hashes of its external inputs. A stage whose complete result has the same
fingerprint is reused; otherwise it runs, writing atomically through the run store, and resumes
from the checkpoints in its work dir when they belong to the same fingerprint.

The main job: base import -> corpus -> continued pretraining -> SFT -> reward -> PPO (or DPO)
-> evaluation -> report (-> serve, from the CLI).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from domain_lm.config import CorpusSource, PipelineConfig
from domain_lm.core.hashing import sha256_json
from domain_lm.core.progress import console, display
from domain_lm.errors import ConfigError, DataError
from domain_lm.pipeline import graph
from domain_lm.pipeline.stage import StageContext, StageInputs
from domain_lm.pipeline.store import Run, StageResult

log = logging.getLogger(__name__)


def stage_inputs(name: str, run: Run) -> StageInputs:
    """The complete upstream results stage ``name`` reads from ``run``."""
    node = graph.node(name)
    results = {s: r for s in node.upstream if (r := run.load(s)) is not None}
    return StageInputs(stage=name, model_from=node.model_from, results=results)


def fingerprint(name: str, config: PipelineConfig, inputs: StageInputs) -> str:
    """What decides whether a stage's result is still current."""
    stage = graph.node(name).stage
    return sha256_json(
        {
            "stage": name,
            "sections": {s: config.section_dict(s) for s in stage.sections},
            "upstream": {k: v.fingerprint for k, v in sorted(inputs.results.items())},
            "data": stage.data_hashes(config),
        }
    )


def is_current(name: str, config: PipelineConfig, run: Run, result: StageResult) -> bool:
    """Whether ``result`` (stage ``name`` of ``run``) matches the config and upstream results now."""
    return fingerprint(name, config, stage_inputs(name, run)) == result.fingerprint


def _claim_work_dir(run: Run, name: str, fp: str) -> None:
    """Checkpoints in the work dir belong to one fingerprint; stale ones (config changed) are wiped
    so ``--resume`` never continues a run made with other inputs."""
    work = run.work_dir(name)
    marker = work / "FINGERPRINT"
    if marker.is_file() and marker.read_text().strip() != fp:
        shutil.rmtree(work)
        work = run.work_dir(name)
    (work / "FINGERPRINT").write_text(fp)


def run_stage(
    name: str, config: PipelineConfig, resume: bool = False, force: bool = False, callbacks: Sequence[Any] = ()
) -> tuple[StageResult, bool]:
    """Run one stage (or reuse its current result). Returns (result, skipped).

    ``callbacks`` are extra ``transformers.TrainerCallback``s handed to the stages that train with
    the HF Trainer (``StageContext.callbacks``).
    """
    stage = graph.node(name).stage
    run = Run.from_config(config)
    inputs = stage_inputs(name, run)
    fp = fingerprint(name, config, inputs)
    done = run.load(name)
    if done is not None and done.fingerprint == fp and not force:
        return done, True
    _claim_work_dir(run, name, fp)
    with run.writing(name, config) as writer:
        writer.result.fingerprint = fp
        writer.result.lineage = [{"stage": k, "fingerprint": v.fingerprint, "path": str(v.path)} for k, v in inputs.results.items()]
        ctx = StageContext(config=config, run=run, writer=writer, inputs=inputs, resume=resume, callbacks=tuple(callbacks))
        t0 = time.time()
        stage.run(ctx)
        missing = [o for o in stage.outputs if o not in writer.result.artefacts]
        if missing:
            raise RuntimeError(f"stage {name} finished without its declared outputs {missing}")
        log.info("stage %s finished in %.1fs", name, time.time() - t0)
    result = run.load(name)
    assert result is not None
    return result, False


# --------------------------------------------------------------------------- the whole pipeline


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
    from domain_lm.models import registry

    registry.check_available(config.base_model.name, store=Path(config.base_model.store) if config.base_model.store else None)
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
    from domain_lm.pipeline.report import scorecard_lines, write_report

    preflight(config)
    stages = graph.plan(config)
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
    for line in scorecard_lines(Run.from_config(config)):
        console.print(line, markup=False, highlight=False)
    console.print(f"[bold]report[/]: {report}")
    return outcomes


def summary_line(o: StageOutcome) -> str:
    state = "[dim]unchanged, reused[/]" if o.skipped else f"done in {o.seconds:.0f}s"
    keys = [k for k, v in o.result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:5]
    metrics = ", ".join(f"{k}={o.result.metrics[k]:.4g}" for k in keys)
    return f"  [green]✓[/] [bold]{o.stage:<9}[/] {state}" + (f"  {metrics}" if metrics else "")


def final_model(run: Run) -> tuple[str, Path] | None:
    """The most refined model a run produced (``graph.FINAL_MODEL_ORDER``): (stage, model dir)."""
    for stage in graph.FINAL_MODEL_ORDER:
        r = run.load(stage)
        if r is not None and r.has("model"):
            return stage, r.artefact("model")
    return None
