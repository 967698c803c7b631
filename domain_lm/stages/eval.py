"""Stage ``eval``: score every upstream model stage on the held-out task split, plus the baseline,
and open the run with a scorecard.

The held-out split is ``records.load_split`` (by document: the corpus stage holds the same documents
out of continued pretraining), sampled to ``eval.max_examples`` per task with a seed. Every stage
is scored on one engine (``eval.engines.score_stages``, ``eval.strategy``): its merged weights loaded
in place in turn, or as LoRA adapters on the base; every task of a stage submitted at once so the
engine's batch stays full. The scorecard (``eval.scorecard``) gives each cell a 95% bootstrap
interval and each task two verdicts: does the domain model beat the base, and is an LLM needed.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

from domain_lm.config import PipelineConfig
from domain_lm.errors import DomainLMError
from domain_lm.pipeline.stage import Stage, StageContext, StageInputs

log = logging.getLogger(__name__)

BASELINE = "baseline (tf-idf+lr)"


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.data.sft_data import data_hashes as sft_data_hashes

    return sft_data_hashes(config)


def stage_models(inputs: StageInputs) -> list[Any]:
    """The model stages to score, in pipeline order, each with the LoRA it trained on its parent's
    model when that parent is the very result scored here (same fingerprint as when it trained)."""
    from domain_lm.eval.engines import StageModel
    from domain_lm.pipeline import graph

    out = []
    for name, result in inputs.results.items():
        if not result.has("model"):
            continue
        adapter = parent = None
        if result.has("adapter") and name in graph.NODES:
            trained_on = {x["stage"]: x["fingerprint"] for x in result.lineage}
            parent = next((s for s in graph.node(name).model_from if s in trained_on), None)
            upstream = inputs.results.get(parent) if parent else None
            if upstream is not None and upstream.fingerprint == trained_on[parent]:
                adapter = result.artefact("adapter")
            else:
                parent = None
        out.append(StageModel(name, result.artefact("model"), adapter, parent))
    return out


def sample_held(records: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    """At most ``n`` of ``records`` (a seeded sample, in their original order)."""
    if n is None or len(records) <= n:
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def _notes(config: PipelineConfig, registry: Any, tasks: dict[str, Any]) -> list[str]:
    """What the scorecard's reader must know about the data: sources, synthetic tasks, tasks left out."""
    from domain_lm.data import embedded

    notes = []
    for t, info in tasks.items():
        names = ", ".join(f"{d} ({n})" for d, n in info["datasets"].items())
        synthetic = " — **synthetic** (code-generated), not real data" if info["synthetic"] else ""
        notes.append(f"{t}: held-out examples from {names}" + synthetic)
    if not config.tasks.datasets and not config.tasks.demo_tasks:
        missing = [n for n in registry.names() if n not in tasks and not embedded.available("task", n)]
        if missing:
            notes.append(
                f"Not scored: {', '.join(missing)}: no permissively licensed data exists for them (their only demo examples are "
                "synthetic); add them with tasks.demo_tasks (synthetic) or tasks.datasets (your data)."
            )
    return notes


def task_info(template: Any, records: Sequence[Any]) -> dict[str, Any]:
    """A task's entry in the report before scoring: metric, languages, size and where the data comes from."""
    from domain_lm.data.records import SYNTHETIC

    datasets: dict[str, int] = {}
    for r in records:
        name = r.dataset or "configured data"
        datasets[name] = datasets.get(name, 0) + 1
    return {
        "metric": template.metric,
        "langs": sorted({r.lang for r in records}),
        "n": len(records),
        "datasets": datasets,
        "synthetic": SYNTHETIC in datasets,
        "systems": {},
    }


def build_report(
    config: PipelineConfig, registry: Any, models: Sequence[Any] | dict[str, str], work_dir: Path | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, list[Any]]]]:
    """Score each model stage (``StageModel``s, or ``{stage: model dir}`` to score merged weights) on
    every task's held-out records; add the baseline and the scorecard. Returns the report and the
    predictions (``{system: {task: [Prediction]}}``, the baseline's included)."""
    from domain_lm.data.records import load_split
    from domain_lm.eval.engines import StageModel, score_stages
    from domain_lm.eval.harness import engine_options, resolve_kind, summarize

    cfg = config.eval
    seed = config.tasks.seed
    split = load_split(config, registry)
    held = {t: sample_held(recs, cfg.max_examples, seed) for t, recs in split.held_by_task().items() if recs}
    tasks = {t: (split.templates[t], recs) for t, recs in held.items()}
    stages = [StageModel(s, Path(p)) for s, p in models.items()] if isinstance(models, dict) else list(models)
    kind = resolve_kind(cfg.engine)
    report: dict[str, Any] = {"title": f"Evaluation of run {config.run.name}", "engine": kind, "engines": [], "tasks": {}}
    report["tasks"] = {t: task_info(tmpl, recs) for t, (tmpl, recs) in tasks.items()}

    # 1. every stage on one engine where it can, every task of a submission answered at once
    opts = engine_options(cfg.engine, cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len)
    t0 = time.perf_counter()
    predictions, runs = score_stages(stages, tasks, cfg.strategy, kind, cfg.max_new_tokens, work_dir, **opts)
    report["engines"] = [r.as_dict() for r in runs]
    for run in runs:
        share = run.answer_s / len(run.systems)  # answer time spread over the stages answered together
        for system in run.systems:
            for t, (tmpl, recs) in tasks.items():
                report["tasks"][t]["systems"][system] = summarize(tmpl, recs, predictions[system][t], share)
    report["answers"] = sum(r.answers for r in runs)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["answers_per_s"] = round(report["answers"] / report["seconds"], 2) if report["seconds"] else None

    # 2. the classical baseline on the same held-out records, then the scorecard
    if cfg.baseline:
        add_baseline(report, predictions, tasks, split.train_by_task(), seed)
    report["scorecard"] = scorecard(report, predictions, tasks, seed)
    report["scorecard"]["notes"] = _notes(config, registry, report["tasks"])
    return report, predictions


def add_baseline(report: dict[str, Any], predictions: dict[str, Any], tasks: dict[str, Any], train: dict[str, Any], seed: int) -> None:
    """TF-IDF + LR scores and predictions for every label task (fitted on its training records)."""
    from domain_lm.eval.harness import Prediction, baseline_predict
    from domain_lm.tasks.metrics import classification_scores

    for t, (tmpl, recs) in tasks.items():
        pred = baseline_predict(tmpl, train.get(t, []), recs, seed=seed)
        if pred is not None:
            scores = classification_scores([r.output for r in recs], pred, tmpl.output.classes)
            report["tasks"][t]["systems"][BASELINE] = {**scores, "train_n": len(train.get(t, []))}
            predictions.setdefault(BASELINE, {})[t] = [Prediction(x, x) for x in pred]


def scorecard(report: dict[str, Any], predictions: dict[str, Any], tasks: dict[str, Any], seed: int) -> dict[str, Any]:
    """The scorecard rows (``eval.scorecard.task_scorecard``); each system's interval is also added
    to its scores in the report (``ci95``)."""
    from domain_lm.eval.harness import records_lang
    from domain_lm.eval.scorecard import final_system, task_scorecard
    from domain_lm.pipeline import graph

    final = final_system(list(predictions), graph.FINAL_MODEL_ORDER)
    rows = []
    for t, (tmpl, recs) in tasks.items():
        preds = {s: [p.output for p in by_task[t]] for s, by_task in predictions.items() if t in by_task}
        row = task_scorecard(tmpl, [r.output for r in recs], preds, final, seed=seed, lang=records_lang(recs))
        row["synthetic"] = report["tasks"][t]["synthetic"]
        rows.append(row)
        for system, cell in row["cells"].items():
            report["tasks"][t]["systems"][system]["ci95"] = [round(cell["low"], 4), round(cell["high"], 4)]
    return {"seed": seed, "rows": rows}


def write_predictions(path: Path, predictions: dict[str, dict[str, list[Any]]]) -> None:
    """Every answer, one JSON line each: system, task, example index, typed output (null: invalid), raw text."""
    from domain_lm.core import atomic

    lines = []
    for system, by_task in predictions.items():
        for t, preds in by_task.items():
            for i, p in enumerate(preds):
                row = {"system": system, "task": t, "i": i, "pred": p.output, "raw": p.raw[:500]}
                lines.append(json.dumps({**row, **({"error": p.error[:300]} if p.error else {})}, ensure_ascii=False, default=str))
    atomic.write_text(path, "\n".join(lines) + "\n")


def run(ctx: StageContext) -> None:
    from domain_lm.core import atomic
    from domain_lm.eval.metrics import PRIMARY, primary
    from domain_lm.eval.report import write_report
    from domain_lm.eval.scorecard import markdown
    from domain_lm.tasks import TemplateRegistry

    cfg = ctx.config
    res = ctx.result
    stages = stage_models(ctx.inputs)
    if not stages:
        raise DomainLMError(
            "Stage eval found no model to evaluate: run at least the `base` stage first (`domain-lm base` or `domain-lm pipeline run`)."
        )
    registry = TemplateRegistry.load(cfg.tasks.templates_dir)
    report, predictions = build_report(cfg, registry, stages, ctx.work_dir)
    paths = write_report(report, ctx.out, stem="report")
    for name, p in paths.items():
        ctx.add_artefact(f"report_{name}" if name != "json" else "report", p.name)
    atomic.write_text(ctx.out / "scorecard.md", markdown(report["scorecard"]))
    ctx.add_artefact("scorecard", "scorecard.md")
    write_predictions(ctx.out / "predictions.jsonl", predictions)
    ctx.add_artefact("predictions", "predictions.jsonl")
    engines = sum(1 for e in report["engines"] if not e.get("reused"))
    res.metrics.update({"answers_per_s": report["answers_per_s"], "answers": report["answers"], "engines": engines})
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
    outputs=("report", "scorecard"),
    run=run,
    data_hashes=data_hashes,
)
