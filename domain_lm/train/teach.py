"""Teach a task from labelled examples: split -> classical model -> adapter -> hot-load -> scores -> serve.

``teach(job)`` is one job, the same for the service (``POST /v1/tasks/{name}/examples``, run by the
job runner in a thread) and ``domain-lm tasks train``:

1. dedupe and split the examples (``records.split_records``: seeded content hash, the split every
   stage uses) and take the next version number in the task store;
2. label tasks: fit TF-IDF + logistic regression on the train side, score it on the held-out side;
3. train the LoRA adapter in a child process (``task_adapter.train_in_subprocess``), load it into
   the running engine as ``<task>@<version>`` (``add_adapter``: no restart, no dropped request);
4. score the LLM answer that will serve (the adapter, or the base model zero-/few-shot) on the
   held-out side through the serving engine itself, with label probabilities calibrated there;
5. write the report: the version is complete, so the task answers with it from now on;
6. score the other LLM systems (zero-shot and few-shot) for the comparison.

A failure in 1-5 removes the version: the served task stays exactly as it was. Every score has a
95% bootstrap interval; label tasks get calibration (temperature scaling, see
``domain_lm.tasks.calibration``) and coverage / accuracy at abstention thresholds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domain_lm.data.records import TaskRecord, dedupe_records, split_records
from domain_lm.errors import DataError, DomainLMError
from domain_lm.inference.base import Engine, EngineError, GenerationRequest, GenerationResult, add_adapter
from domain_lm.inference.classical import CLASSICAL_MODEL, ClassicalModel
from domain_lm.inference.tasks import TaskRunner
from domain_lm.inference.taught import SYSTEM_NAMES, llm_request, scores_labels
from domain_lm.tasks import ContractError, TaskTemplate
from domain_lm.tasks import calibration as cal
from domain_lm.tasks.adapter_store import ADAPTER_DIR, AdapterStore, TaskVersion, adapter_name, now, write_records
from domain_lm.tasks.fewshot import ExampleIndex, Shot
from domain_lm.tasks.metrics import PRIMARY, primary
from domain_lm.train.task_adapter import TeachConfig, TrainSpec, train_in_subprocess

log = logging.getLogger(__name__)

#: Requests per engine batch while scoring (live traffic interleaves between batches).
EVAL_BATCH = 16
#: Log-probability floor for labels the classical model never saw (keeps the calibration finite).
_FLOOR = -50.0

#: (phase, fraction done or None, message)
Progress = Callable[[str, float | None, str], None]


def _quiet(phase: str, fraction: float | None, message: str) -> None:
    log.info("teach %s %s %s", phase, fraction, message)


@dataclass
class TeachJob:
    """One teaching job: the task, its examples, where results go and the engine that serves."""

    template: TaskTemplate
    records: list[TaskRecord]
    store: AdapterStore
    model_path: str
    engine: Engine
    config: TeachConfig = field(default_factory=TeachConfig)
    job_id: str = "local"
    author: str = "cli"
    request_id: str | None = None
    progress: Progress = _quiet
    cancelled: threading.Event = field(default_factory=threading.Event)
    train: Callable[..., dict[str, Any]] = train_in_subprocess
    on_version: Callable[[TaskVersion], None] = lambda v: None


@dataclass
class SystemRun:
    """One system's answers on the held-out records: typed predictions (None: contract broken) and,
    for scored label answers, every label's log-likelihood in label order."""

    preds: list[Any]
    logits: list[list[float]] | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- answering held-out records


def _generate(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult | None]:
    """Batched; a batch the engine refuses is retried one by one, so one bad example costs only itself."""
    try:
        return list(engine.generate_batch(requests))
    except EngineError:
        out: list[GenerationResult | None] = []
        for r in requests:
            try:
                out.append(engine.generate_batch([r])[0])
            except EngineError:
                out.append(None)
        return out


def run_llm(
    engine: Engine,
    template: TaskTemplate,
    held: list[TaskRecord],
    adapter: str | None,
    pools: dict[str, ExampleIndex] | None,
    k: int,
    cfg: TeachConfig,
    progress: Callable[[float], None] = lambda f: None,
) -> SystemRun:
    """Answer every held-out record as the service would (same request builder), in batches."""
    runner = TaskRunner(engine)
    t0 = time.perf_counter()
    requests = []
    for r in held:
        shots = pools[r.lang].nearest(r.inputs, k) if pools and k and r.lang in pools else []
        requests.append(
            llm_request(runner, template, r.inputs, r.lang, adapter, shots, scores_labels(template, r.lang, cfg.max_scored_choices))
        )
    results: list[GenerationResult | None] = []
    for i in range(0, len(requests), EVAL_BATCH):
        results += _generate(engine, requests[i : i + EVAL_BATCH])
        progress(min(1.0, (i + EVAL_BATCH) / max(1, len(requests))))
    preds: list[Any] = []
    logits: list[list[float]] = []
    scored = all(res is not None and res.choice_logprobs for res in results) and bool(results)
    for r, res in zip(held, results):
        try:
            preds.append(None if res is None else template.parse_output(res.text, r.lang, r.inputs))
        except ContractError:
            preds.append(None)
        if scored:
            lps = res.choice_logprobs or {}
            logits.append([lps.get(c, _FLOOR) for c in template.choices(r.lang) or []])
    return SystemRun(preds, logits if scored else None, time.perf_counter() - t0)


def run_classical(template: TaskTemplate, train: list[TaskRecord], held: list[TaskRecord], lang: str, seed: int) -> SystemRun:
    t0 = time.perf_counter()
    model = ClassicalModel(template, lang, seed).fit([r.inputs for r in train], [r.output for r in train])
    lp = np.maximum(model.log_proba([r.inputs for r in held]), _FLOOR)
    preds = [model.labels[int(i)] for i in lp.argmax(axis=1)]
    return SystemRun(preds, lp.tolist(), time.perf_counter() - t0, {"model": CLASSICAL_MODEL, "train_n": len(train)})


# --------------------------------------------------------------------------- scoring


def _scorer(template: TaskTemplate, n_boot: int) -> tuple[Callable[[Any], Any], Callable[[list[Any], list[Any]], float], int]:
    """(encode a value, the headline metric over encoded values, resamples): label codes and a numpy
    weighted F1 for classification (a thousand resamples in well under a second), else the task metric."""
    labels = template.output.classes
    if labels is not None and template.metric == "classification":
        code = {lab: i for i, lab in enumerate(labels)}
        return (lambda x: code.get(x, -1) if x is not None else -1), (lambda g, p: cal.weighted_f1_codes(g, p, len(labels))), n_boot
    return (lambda x: x), (lambda g, p: primary(template.metric, template.score(g, p))), min(n_boot, 200)


def summarize(template: TaskTemplate, held: list[TaskRecord], run: SystemRun, n_boot: int, seed: int) -> dict[str, Any]:
    """Headline score with a 95% bootstrap interval, the full scores, and for scored label answers
    the calibration (temperature, per-label bias, ECE before / after) and coverage at abstention thresholds.

    When the calibration keeps per-label biases the service answers with them, so the headline is the
    score of the calibrated answers, cross-fitted (each half of the split answered with the calibration
    fitted on the other half); ``uncalibrated`` keeps the plain answers' score."""
    gold = [r.output for r in held]
    encode, metric, boots = _scorer(template, n_boot)
    labels = template.output.classes
    preds = run.preds
    calibration: dict[str, Any] | None = None
    if run.logits is not None and labels is not None:
        g_idx = [labels.index(x) for x in gold]
        by_codes = template.metric == "classification"  # _scorer's metric then reads label codes
        calibration = cal.calibrate(run.logits, g_idx, (lambda g, p: metric(list(g), list(p))) if by_codes else None)
        cross = calibration.pop("cross_fitted", None)
        probs = np.exp(cal.scaled_log_softmax(run.logits, calibration["temperature"], calibration["bias"]))
        calibration["selective"] = cal.selective(probs.max(axis=1).tolist(), (probs.argmax(axis=1) == np.asarray(g_idx)).tolist())
        calibration["bias"] = dict(zip(labels, calibration["bias"]))
        if cross is not None:
            preds = [labels[i] for i in cross]
    scores = template.score(gold, preds)
    ci = cal.bootstrap_ci([encode(x) for x in gold], [encode(x) for x in preds], metric, boots, seed)
    out: dict[str, Any] = {"score": primary(template.metric, scores), "ci": list(ci), "n": len(held), "seconds": round(run.seconds, 2)}
    out.update(run.extra)
    out["scores"] = {k: v for k, v in scores.items() if k != "per_class_f1"}
    out["preds"] = preds
    if preds is not run.preds:
        raw = cal.bootstrap_ci([encode(x) for x in gold], [encode(x) for x in run.preds], metric, boots, seed)
        out["uncalibrated"] = {"score": primary(template.metric, template.score(gold, run.preds)), "ci": list(raw)}
    if calibration is not None:
        out["calibration"] = calibration
    return out


def paired_diff(
    template: TaskTemplate, held: list[TaskRecord], a: dict[str, Any], b: dict[str, Any], n_boot: int, seed: int
) -> dict[str, Any]:
    """Paired difference a - b of the headline score on the same held-out records, with its 95% interval."""
    encode, metric, boots = _scorer(template, n_boot)
    gold = [encode(r.output) for r in held]
    point, lo, hi = cal.paired_bootstrap_diff(gold, [encode(x) for x in a["preds"]], [encode(x) for x in b["preds"]], metric, boots, seed)
    return {"diff": point, "ci": [lo, hi]}


# --------------------------------------------------------------------------- the job


def split_examples(template: TaskTemplate, records: list[TaskRecord], cfg: TeachConfig) -> tuple[list[TaskRecord], list[TaskRecord], int]:
    """(train, held-out, duplicates dropped); ``DataError`` when the examples cannot teach the task."""
    kept, dups = dedupe_records(records)
    if len(kept) < cfg.min_examples:
        raise DataError(f"{len(kept)} distinct examples; teaching a task needs at least {cfg.min_examples}")
    train, held = split_records(kept, cfg.eval_fraction, cfg.seed)
    if not held or len(train) < 2:
        raise DataError(f"the split left {len(train)} training and {len(held)} held-out examples; upload more examples")
    labels = template.output.classes
    if labels is not None and len({r.output for r in train}) < 2:
        raise DataError("the training side has examples of only one label; a label task needs at least two")
    return train, held, dups


def _pools(template: TaskTemplate, train: list[TaskRecord], max_chars: int) -> dict[str, ExampleIndex]:
    by_lang: dict[str, list[Shot]] = {}
    for r in train:
        by_lang.setdefault(r.lang, []).append(Shot(r.inputs, r.output))
    return {lang: ExampleIndex(template, lang, shots, max_chars) for lang, shots in by_lang.items()}


def teach(job: TeachJob) -> dict[str, Any]:
    """Run the job (see the module docstring); returns the version's report (and comparison)."""
    t_start = time.perf_counter()
    t, cfg, store = job.template, job.config, job.store
    job.progress("preparing", None, "splitting the examples")
    train, held, dups = split_examples(t, job.records, cfg)
    held_eval = held[: cfg.max_eval]
    lang = Counter(r.lang for r in train).most_common(1)[0][0]
    version, vdir = store.reserve(t.name, job.job_id, job.author, job.request_id)
    complete = False
    try:
        write_records(vdir / "train.jsonl", train)
        write_records(vdir / "held.jsonl", held)
        labels = t.output.classes
        systems: dict[str, dict[str, Any]] = {}
        timings: dict[str, float] = {}
        if labels is not None:
            job.progress("classical", None, "fitting TF-IDF + logistic regression")
            systems["classical"] = summarize(t, held_eval, run_classical(t, train, held_eval, lang, cfg.seed), cfg.n_boot, cfg.seed)
        adapter = None
        train_info: dict[str, Any] = {}
        if cfg.adapter:
            _check(job)
            job.progress("training", 0.0, "starting the training process")
            spec = TrainSpec(
                model_path=job.model_path,
                template_yaml=t.to_yaml(),
                records_path=str(vdir / "train.jsonl"),
                out_dir=str(vdir / ADAPTER_DIR),
                work_dir=str(vdir / ".work"),
                config=cfg,
            )
            t0 = time.perf_counter()
            train_info = job.train(spec, lambda f, m: job.progress("training", f, m), job.cancelled)
            timings["train_s"] = time.perf_counter() - t0
            _check(job)
            job.progress("loading", None, "loading the adapter into the running engine")
            adapter = adapter_name(t.name, version)
            t0 = time.perf_counter()
            add_adapter(job.engine, adapter, str(vdir / ADAPTER_DIR))
            timings["load_s"] = time.perf_counter() - t0
        pools = _pools(t, train, t.few_shot.max_chars if t.few_shot else 2000)
        k = t.few_shot.k if t.few_shot else cfg.few_shot_k
        serving = "adapter" if adapter else ("few_shot" if t.few_shot else "zero_shot")
        started = f"scoring the {SYSTEM_NAMES[serving]} answers on {len(held_eval)} held-out examples"
        systems[serving] = _score_llm(job, "evaluating", started, serving, held_eval, adapter, pools, k)
        if adapter:
            systems[serving].update(adapter=adapter, train={k: v for k, v in train_info.items() if not isinstance(v, (list, dict))})
        timings["to_serving_s"] = time.perf_counter() - t_start
        report = {
            "task": t.name,
            "version": version,
            "job": job.job_id,
            "author": job.author,
            "template_version": t.version,
            "base_model": Path(job.model_path).name,
            "created": now(),
            "metric": PRIMARY.get(t.metric, t.metric),
            "examples": {
                "uploaded": len(job.records),
                "duplicates": dups,
                "train": len(train),
                "held": len(held),
                "evaluated": len(held_eval),
                "labels": dict(Counter(str(r.output) for r in train + held)) if labels is not None else None,
            },
            "serving_system": serving,
            "systems": systems,
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        v = store.complete(t.name, version, report)
        complete = True
    except BaseException as e:
        if not complete:
            store.discard(t.name, version, job.job_id, f"{type(e).__name__}: {e}")
        raise
    job.on_version(v)
    job.progress("serving", 1.0, f"version {version} serves ({SYSTEM_NAMES[serving]})")
    comparison = _compare(job, v, held_eval, pools, k, systems) if cfg.compare else {}
    return {**report, "comparison": comparison}


class JobCancelled(DomainLMError):
    """The job was cancelled; what it made is removed."""


def _check(job: TeachJob) -> None:
    if job.cancelled.is_set():
        raise JobCancelled("the job was cancelled")


def _score_llm(
    job: TeachJob,
    phase: str,
    started: str,
    system: str,
    held: list[TaskRecord],
    adapter: str | None,
    pools: dict[str, ExampleIndex],
    k: int,
) -> dict[str, Any]:
    """Score one LLM serving system (zero-shot, few-shot or adapter) on ``held``, reporting progress as ``phase``."""
    t, cfg = job.template, job.config
    _check(job)
    job.progress(phase, 0.0, started)
    run = run_llm(
        job.engine,
        t,
        held,
        adapter,
        pools if system == "few_shot" else None,
        k,
        cfg,
        lambda f: job.progress(phase, f, f"scoring {SYSTEM_NAMES[system]}"),
    )
    out = summarize(t, held, run, cfg.n_boot, cfg.seed)
    if system == "few_shot":
        out["k"] = k
    return out


def _compare(
    job: TeachJob, v: TaskVersion, held: list[TaskRecord], pools: dict[str, ExampleIndex], k: int, systems: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Zero-shot and few-shot base-model scores after the version serves (its failure undoes nothing)."""
    t, cfg = job.template, job.config
    comp: dict[str, Any] = {"systems": {}}
    try:
        for system in ("zero_shot", "few_shot"):
            if system in systems:
                continue
            started = f"scoring {SYSTEM_NAMES[system]} on {len(held)} held-out examples"
            comp["systems"][system] = _score_llm(job, "comparing", started, system, held, None, pools, k)
        everything = {**systems, **comp["systems"]}
        pairs = [("adapter", "zero_shot"), ("adapter", "classical"), ("few_shot", "zero_shot"), ("classical", "zero_shot")]
        comp["diffs"] = {
            f"{a}-{b}": paired_diff(t, held, everything[a], everything[b], cfg.n_boot, cfg.seed)
            for a, b in pairs
            if a in everything and b in everything
        }
    except Exception as e:  # noqa: BLE001 - the version already serves; the comparison is extra
        log.exception("comparison failed for %s v%s", t.name, v.version)
        comp["error"] = f"{type(e).__name__}: {e}"
    job.store.add_comparison(t.name, v.version, comp)
    job.on_version(job.store.version(t.name, v.version) or v)
    return comp


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """A job's result as clients see it: each system's held-out score, interval and calibration
    (without the per-example predictions), the paired differences and the timings."""
    comparison = report.get("comparison", {})
    systems = {**report.get("systems", {}), **comparison.get("systems", {})}
    return {
        "version": report["version"],
        "metric": report["metric"],
        "examples": report["examples"],
        "serving_system": report.get("serving_system"),
        "systems": {name: {k: v for k, v in res.items() if k != "preds"} for name, res in systems.items()},
        "diffs": comparison.get("diffs", {}),
        "comparison_error": comparison.get("error"),
        "timings": report.get("timings", {}),
    }
