"""Stage ``eval``: score every upstream model stage on the held-out task split, plus the baseline.

The held-out split is recomputed from the task data with the same seeded, content-hashed split
``sft`` uses (``sft_data.split_records``), so this stage scores exactly the records SFT never saw,
and also works when only the base model exists.
"""

from __future__ import annotations

import logging
from typing import Any

from domain_lm.config import PipelineConfig
from domain_lm.errors import DomainLMError
from domain_lm.pipeline.stage import Stage, StageContext

log = logging.getLogger(__name__)

BASELINE = "baseline (tf-idf+lr)"


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.data.sft_data import data_hashes as sft_data_hashes

    return sft_data_hashes(config)


def build_report(config: PipelineConfig, registry: Any, models: dict[str, str]) -> dict[str, Any]:
    """Score each ``stage -> model dir`` on every task's held-out records; add the baseline."""
    from domain_lm.eval.harness import engine_options, evaluate_baseline, evaluate_model, resolve_kind

    cfg = config.eval
    from domain_lm.data.records import load_split

    split = load_split(config, registry)
    train, held = split.train_by_task(), split.held_by_task()
    if cfg.max_examples is not None:
        held = {t: recs[: cfg.max_examples] for t, recs in held.items()}
    tasks = {t: (registry.get(t), recs) for t, recs in held.items() if recs}
    report: dict[str, Any] = {"title": f"Evaluation of run {config.run.name}", "engine": resolve_kind(cfg.engine), "tasks": {}}
    for t, (tmpl, recs) in tasks.items():
        report["tasks"][t] = {"metric": tmpl.metric, "langs": sorted({r.lang for r in recs}), "n": len(recs), "systems": {}}
    opts = engine_options(cfg.engine, cfg.gpu_memory_utilization)
    for stage, path in models.items():
        log.info("eval: scoring %s (%s)", stage, path)
        for t, scores in evaluate_model(path, tasks, kind=cfg.engine, max_tokens=cfg.max_new_tokens, **opts).items():
            report["tasks"][t]["systems"][stage] = scores
    if cfg.baseline:
        for t, (tmpl, recs) in tasks.items():
            b = evaluate_baseline(tmpl, train.get(t, []), recs, seed=config.tasks.seed)
            if b is not None:
                report["tasks"][t]["systems"][BASELINE] = b
    return report


def run(ctx: StageContext) -> None:
    from domain_lm.eval.metrics import PRIMARY, primary
    from domain_lm.eval.report import write_report
    from domain_lm.tasks import TemplateRegistry

    cfg = ctx.config
    res = ctx.result
    models = {stage: str(path) for stage, path in ctx.inputs.models().items()}
    if not models:
        raise DomainLMError(
            "Stage eval found no model to evaluate: run at least the `base` stage first (`domain-lm base` or `domain-lm pipeline run`)."
        )
    registry = TemplateRegistry.load(cfg.tasks.templates_dir)
    report = build_report(cfg, registry, models)
    paths = write_report(report, ctx.out, stem="report")
    for name, p in paths.items():
        ctx.add_artefact(f"report_{name}" if name != "json" else "report", p.name)
    for t, info in report["tasks"].items():
        for system, scores in info["systems"].items():
            if "skipped" in scores:
                continue
            key = "baseline" if system == BASELINE else system
            res.metrics[f"{t}/{key}/{PRIMARY.get(info['metric'], 'score')}"] = round(primary(info["metric"], scores), 4)
            if "invalid" in scores and system != BASELINE:
                res.metrics[f"{t}/{key}/invalid"] = scores["invalid"]
    res.inputs.update(data_hashes(cfg))


STAGE = Stage(
    name="eval",
    title="Evaluation across stages",
    sections=("eval", "tasks"),
    outputs=("report",),
    run=run,
    data_hashes=data_hashes,
)
