"""Shared machinery of the bank-task benches (``sft_bench``, ``data_budget``, ``task_interaction``).

A *bench task* is a bundled template in one language with its real training sources and the one
source its held-out split is scored on (``TASKS``). Every split is by document (the record's group:
a news article, a company's filings or calls, a report context) with a seeded hash, so a document
never straddles train and held-out, and nothing is tuned on the held-out part.

A *cell* is one training run (a task mix, examples per task, a recipe) followed by the evaluation of
its adapter on the held-out records of every bench task. Cells are written as they finish
(``<out>/cells/<name>/result.json``) and skipped when present, so a bench interrupted overnight
resumes where it stopped. Base-model and baseline scores are cached the same way.

The benches import this module from their own directory (``python bench/<bench>.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MODELS = {"en": "smollm2-135m", "zh": "gemma3-270m"}


@dataclass(frozen=True)
class BenchTask:
    """One template in one language: where its training and held-out records come from and how it is scored."""

    key: str
    template: str
    lang: str
    train_sources: tuple[str, ...]
    eval_source: str
    headline: str  # the score key the tables show
    max_tokens: int  # generation cap for the held-out answers
    test_max: int  # held-out records scored (a seeded sample of the split)
    baseline: str | None = None  # "tfidf" (label tasks) or "lead" (summaries)
    lead_n: int = 3


TASKS: dict[str, BenchTask] = {
    t.key: t
    for t in [
        BenchTask("sentiment_en", "sentiment", "en", ("fpb",), "fpb", "weighted_f1", 8, 300, "tfidf"),
        BenchTask("entities_en", "entities", "en", ("finer_ord", "fin_ner"), "finer_ord", "f1", 160, 200),
        BenchTask("extraction_en", "extraction", "en", ("tatqa", "tatqa_tables", "kpi_edgar", "nlupp"), "tatqa", "value_match", 160, 100),
        BenchTask("summary_en", "report_summary", "en", ("ectsum",), "ectsum", "rougeL", 128, 60, "lead", 3),
        BenchTask("key_points_en", "key_points", "en", ("ectsum_key_points",), "ectsum_key_points", "rougeL", 160, 60),
        BenchTask("sentiment_zh", "sentiment", "zh", ("finfe",), "finfe", "weighted_f1", 8, 300, "tfidf"),
        BenchTask("entities_zh", "entities", "zh", ("cluener",), "cluener", "f1", 128, 200),
        BenchTask("summary_zh", "report_summary", "zh", ("finna",), "finna", "rougeL", 64, 150, "lead", 1),
    ]
}


def tasks_of(spec: str) -> list[BenchTask]:
    """Bench tasks from a comma list of keys or languages (``en``, ``zh``, ``all``)."""
    out: list[BenchTask] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        found = [t for t in TASKS.values() if part in (t.key, t.lang, "all")]
        if not found:
            raise SystemExit(f"unknown bench task {part!r}; known: {', '.join(TASKS)}, en, zh, all")
        out += [t for t in found if t not in out]
    return out


# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    train: list[Any]  # TaskRecord, training part of every train source
    test: list[Any]  # TaskRecord, held-out part of the eval source (seeded sample of test_max)
    held_out_total: int  # held-out records of the eval source before sampling
    dev: list[Any] = field(default_factory=list)  # held-out records outside the scored sample (calibration)


_SOURCES: dict[tuple[str, str], list[Any]] = {}


def task_data(task: BenchTask, data: Path, seed: int = 42, test_fraction: float = 0.2) -> TaskData:
    """Train / held-out records of ``task``, split by document (``records.split_records``)."""
    from domain_lm.data.bank_sources import load_source
    from domain_lm.data.records import dedupe_records, split_records

    train: list[Any] = []
    test: list[Any] = []
    for src in dict.fromkeys(task.train_sources + (task.eval_source,)):
        if (src, str(data)) not in _SOURCES:
            _SOURCES[(src, str(data))] = dedupe_records(load_source(src, data))[0]
        tr, te = split_records(_SOURCES[(src, str(data))], test_fraction, seed)
        if src in task.train_sources:
            train += tr
        if src == task.eval_source:
            test = te
    rng = random.Random(f"{seed}:{task.key}:test")
    sample = rng.sample(test, min(task.test_max, len(test)))
    scored = {id(r) for r in sample}
    rest = [r for r in test if id(r) not in scored]
    dev = random.Random(f"{seed}:{task.key}:dev").sample(rest, len(rest))
    return TaskData(train=train, test=sample, held_out_total=len(test), dev=dev)


def training_records(train: list[Any], n: int, seed: int, key: str) -> list[Any]:
    """A seeded sample of ``n`` training records (all when fewer): nested, so a smaller budget's
    records are a subset of a larger one's (the data-budget curve then varies only the amount)."""
    order = random.Random(f"{seed}:{key}:train").sample(train, len(train))
    return order[:n]


def render(template: Any, records: list[Any], seed: int) -> list[dict[str, Any]]:
    """Zero-shot chat examples in a seeded choice of the template's phrasings (the eval uses phrasing 0),
    without the records whose training answer breaks the contract (as the SFT stage leaves them out)."""
    from domain_lm.data.sft_data import has_target, render_train_examples

    return render_train_examples(template, [r for r in records if has_target(template, r)], 1, 0.0, 1, random.Random(seed))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Recipe:
    """LoRA SFT settings of one cell."""

    lr: float = 1e-3
    rank: int = 16
    epochs: float = 2.0
    batch_size: int = 8
    max_steps: int = -1
    top_layers: int | None = None
    max_seq_len: int = 1024
    seed: int = 42

    def section(self) -> Any:
        from domain_lm.config import SftSection

        return SftSection(
            peft={"method": "lora", "lora": {"r": self.rank, "alpha": 2 * self.rank, "dropout": 0.05}, "top_layers": self.top_layers},
            train={
                "learning_rate": self.lr,
                "num_epochs": self.epochs,
                "max_steps": self.max_steps,
                "batch_size": self.batch_size,
                "max_seq_len": self.max_seq_len,
                "warmup_ratio": 0.05,
                "lr_scheduler": "cosine",
                "logging_steps": 5,
                "save_steps": 100000,
                "seed": self.seed,
            },
        )


def fit_examples(examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> list[dict[str, Any]]:
    """Examples whose chat rendering fits ``max_seq_len`` tokens (what the trainer would truncate)."""
    from domain_lm.data.sft_data import token_length

    return [e for e in examples if token_length(tokenizer, e["messages"]) <= max_seq_len]


def train(model_path: Path, examples: list[dict[str, Any]], recipe: Recipe, out: Path) -> dict[str, Any]:
    """Train a LoRA adapter into ``out/adapter``; the trainer's metrics and throughput."""
    from domain_lm.train.sft import train_sft

    t0 = time.time()
    result = train_sft(model_path, examples, recipe.section(), out / "work", out / "adapter", description=f"bench {out.name}")
    m = asdict(result) if is_dataclass(result) else dict(result)  # type: ignore[arg-type]
    history = m.pop("history", [])
    seconds = time.time() - t0
    tokens = next((r["num_tokens"] for r in reversed(history) if "num_tokens" in r), None)
    shutil.rmtree(out / "work", ignore_errors=True)  # checkpoints: not needed once the adapter is saved
    return {**m, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds if tokens else None,
            "loss_curve": [r["loss"] for r in history]}


# --------------------------------------------------------------------------- evaluation


def value_exact(gold: list[Any], pred: list[Any]) -> float:
    """Share of answers whose ``value`` equals the gold value exactly (the numeric span, as a number)."""
    ok = [isinstance(p, dict) and isinstance(g, dict) and p.get("value") == g.get("value") for g, p in zip(gold, pred)]
    return sum(ok) / len(ok) if ok else 0.0


#: The engine that answers the held-out records: vLLM where installed (as the eval stage and the
#: service answer; ~5x the transformers engine here), else transformers. ``DOMAIN_LM_BENCH_ENGINE=hf``
#: forces transformers.
ENGINE = os.environ.get("DOMAIN_LM_BENCH_ENGINE", "auto")


def evaluate(model_path: Path, tasks: list[BenchTask], tests: dict[str, list[Any]], adapter: Path | None = None,
             preds_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Score each task's held-out records with the model (and ``adapter``) through ``TaskRunner``,
    with the template's contract enforced as the service does; invalid answers count as wrong."""
    from domain_lm.eval.harness import engine_options, predict, resolve_kind, score_predictions
    from domain_lm.inference import create_engine
    from domain_lm.tasks import TemplateRegistry
    from domain_lm.tasks.grounding import grounding_counts

    templates = TemplateRegistry.load(REPO / "task_templates")
    kind = resolve_kind(ENGINE)
    options = engine_options(kind) if kind == "vllm" else {"max_batch_size": 16}
    engine = create_engine(model_path, kind=kind, adapters={"sft": str(adapter)} if adapter else None, **options)
    out: dict[str, dict[str, Any]] = {}
    try:
        for task in tasks:
            t, recs = templates.get(task.template), tests[task.key]
            t0 = time.time()
            preds = predict(engine, t, [r.inputs for r in recs], lang=task.lang, adapter="sft" if adapter else None,
                            batch_size=64 if kind == "vllm" else 16, max_tokens=task.max_tokens)
            scores = score_predictions(t, [r.output for r in recs], preds, lang=task.lang)
            scores = {k: v for k, v in scores.items() if k not in ("per_class_f1",)}
            if task.template == "extraction":
                scores["value_exact"] = value_exact([r.output for r in recs], [p.output for p in preds])
                scores["value_match"] = scores.get("per_field_accuracy", {}).get("value", 0.0)
            schema = t.output.json_schema() if t.output.kind == "json" else None
            if schema is not None and getattr(t.output, "_grounded", False):
                scores["grounding"] = grounding_counts(t.output.schema_, [(p.output, r.inputs) for p, r in zip(preds, recs)])
            scores["eval_seconds"] = time.time() - t0
            out[task.key] = scores
            if preds_dir is not None:
                preds_dir.mkdir(parents=True, exist_ok=True)
                rows = [{"inputs": r.inputs, "gold": r.output, "pred": p.output, "raw": p.raw, "error": p.error}
                        for r, p in zip(recs, preds)]
                (preds_dir / f"{task.key}.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows),
                                                             encoding="utf-8")
            log.warning("[eval] %s %s=%.4f invalid=%s (%.0fs)", task.key, task.headline, headline(task, scores), scores.get("invalid"),
                        scores["eval_seconds"])
    finally:
        engine.close()
    return out


def calibrated(model_path: Path, task: BenchTask, data: TaskData, adapter: Path, n_dev: int) -> dict[str, dict[str, Any]]:
    """A label task answered as a taught task serves it: every label scored (the service's own request,
    ``teach.run_llm``), the temperature and per-label bias fitted (``calibration.calibrate``) on ``n_dev``
    held-out records outside the scored sample, the scored sample answered with them. The classical
    baseline gets the same calibration on the same records. Returns ``{"sft": scores, "baseline": scores}``."""
    import numpy as np

    from domain_lm.eval.harness import engine_options, resolve_kind
    from domain_lm.inference import create_engine
    from domain_lm.tasks import TemplateRegistry
    from domain_lm.tasks import calibration as cal
    from domain_lm.train.task_adapter import TeachConfig
    from domain_lm.train.teach import run_classical, run_llm

    t = TemplateRegistry.load(REPO / "task_templates").get(task.template)
    labels = t.output.classes
    if labels is None:
        raise SystemExit(f"--calibrate: {task.key} is not a label task")
    dev, test = data.dev[:n_dev], data.test
    if len(dev) < 2 * cal.MIN_BIAS:
        raise SystemExit(f"--calibrate: {task.key} has {len(dev)} held-out records outside the scored sample; "
                         f"biases need {2 * cal.MIN_BIAS}")
    kind = resolve_kind(ENGINE)
    engine = create_engine(model_path, kind=kind, adapters={"sft": str(adapter)},
                           **(engine_options(kind) if kind == "vllm" else {"max_batch_size": 16}))
    try:
        runs = {"sft": run_llm(engine, t, dev + test, "sft", None, 0, TeachConfig())}
    finally:
        engine.close()
    runs["baseline"] = run_classical(t, data.train, dev + test, task.lang, 42)
    code = {lab: i for i, lab in enumerate(labels)}
    g_dev = [code[r.output] for r in dev]
    g_test = [code[r.output] for r in test]
    f1 = lambda g, p: cal.weighted_f1_codes(g, p, len(labels))  # noqa: E731
    out: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        if run.logits is None:
            raise SystemExit(f"--calibrate: the engine returned no label scores for {task.key}")
        x = np.asarray(run.logits, dtype=float)
        c = cal.calibrate(x[: len(dev)], g_dev, f1)
        pred = cal.scaled_log_softmax(x[len(dev):], c["temperature"], c["bias"]).argmax(axis=1)
        plain = x[len(dev):].argmax(axis=1)
        scores = {k: v for k, v in t.score([r.output for r in test], [labels[i] for i in pred]).items() if k != "per_class_f1"}
        scores.update(
            ci=list(cal.bootstrap_ci(g_test, pred.tolist(), f1)),
            scored_uncalibrated=f1(g_test, plain.tolist()),
            vs_uncalibrated=list(cal.paired_bootstrap_diff(g_test, pred.tolist(), plain.tolist(), f1)),
            predicted={lab: int((pred == i).sum()) for i, lab in enumerate(labels)},
            gold={lab: g_test.count(i) for i, lab in enumerate(labels)},
            calibration={"dev": len(dev), "temperature": c["temperature"], "bias": dict(zip(labels, c["bias"])),
                         "dev_score_before": c.get("score_before"), "dev_score_after": c.get("score_after")},
        )
        out[name] = scores
        log.warning("[calibrated] %s %s: weighted_f1 %.4f (uncalibrated %.4f), bias %s", task.key, name, scores["weighted_f1"],
                    scores["scored_uncalibrated"], scores["calibration"]["bias"])
    return out


def headline(task: BenchTask, scores: dict[str, Any]) -> float:
    v = scores.get(task.headline)
    return float(v) if isinstance(v, (int, float)) else 0.0


def baseline(task: BenchTask, data: TaskData, seed: int = 42) -> dict[str, Any] | None:
    """The classical baseline on the same held-out records: TF-IDF + logistic regression (fit on the
    whole training part) for label tasks, the first sentences of the input for summaries."""
    from domain_lm.data.bank_sources import lead
    from domain_lm.eval.harness import evaluate_baseline
    from domain_lm.tasks import TemplateRegistry
    from domain_lm.tasks.metrics import rouge_scores

    t = TemplateRegistry.load(REPO / "task_templates").get(task.template)
    if task.baseline == "tfidf":
        return evaluate_baseline(t, data.train, data.test, seed=seed)
    if task.baseline == "lead":
        preds = [lead(r.inputs["text"], task.lead_n, task.lang) for r in data.test]
        return {**rouge_scores([r.output for r in data.test], preds, task.lang), "name": f"lead-{task.lead_n}"}
    return None


# --------------------------------------------------------------------------- results on disk


def cached(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, read from ``path`` when a previous run wrote it (resumable benches)."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)
    return value


def cell_name(label: str, **parts: Any) -> str:
    """A readable, stable cell directory name: the label plus a short hash of what defines the cell."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}-{digest}"


@dataclass
class Cell:
    """One training run on a task mix and its evaluation on every task of the bench."""

    label: str
    train_counts: dict[str, int]  # bench task key -> training records
    recipe: Recipe = field(default_factory=Recipe)

    def name(self) -> str:
        return cell_name(self.label, counts=self.train_counts, recipe=asdict(self.recipe))


def run_cell(cell: Cell, model_path: Path, data: dict[str, TaskData], eval_tasks: list[BenchTask], out: Path,
             keep_adapter: bool = False) -> dict[str, Any]:
    """Train ``cell`` and score its adapter on ``eval_tasks``; cached in ``out/cells/<name>/result.json``."""
    from domain_lm.models.loading import load_tokenizer
    from domain_lm.tasks import TemplateRegistry

    cdir = out / "cells" / cell.name()

    def compute() -> dict[str, Any]:
        templates = TemplateRegistry.load(REPO / "task_templates")
        tok = load_tokenizer(model_path)
        examples: list[dict[str, Any]] = []
        used: dict[str, int] = {}
        for key, n in cell.train_counts.items():
            task = TASKS[key]
            recs = training_records(data[key].train, n, cell.recipe.seed, key)
            exs = fit_examples(render(templates.get(task.template), recs, cell.recipe.seed), tok, cell.recipe.max_seq_len)
            used[key] = len(exs)
            examples += exs
        random.Random(cell.recipe.seed).shuffle(examples)
        log.warning("[cell] %s: %s examples %s", cell.name(), len(examples), used)
        trained = train(model_path, examples, cell.recipe, cdir)
        scores = evaluate(model_path, eval_tasks, {t.key: data[t.key].test for t in eval_tasks}, cdir / "adapter", cdir / "preds")
        if not keep_adapter:
            shutil.rmtree(cdir / "adapter", ignore_errors=True)
        return {"label": cell.label, "train_counts": cell.train_counts, "examples_used": used, "recipe": asdict(cell.recipe),
                "train": trained, "scores": scores}

    return cached(cdir / "result.json", compute)


def base_scores(model_path: Path, tasks: list[BenchTask], data: dict[str, TaskData], out: Path) -> dict[str, dict[str, Any]]:
    """The untrained model's scores per task (cached per model and task)."""
    return {
        t.key: cached(out / "base" / Path(model_path).name / f"{t.key}.json",
                      lambda t=t: evaluate(model_path, [t], {t.key: data[t.key].test},
                                           preds_dir=out / "base" / Path(model_path).name)[t.key])
        for t in tasks
    }


def model_dir(name: str) -> Path:
    from domain_lm.models import registry

    return Path(name) if Path(name).is_dir() else Path(registry.resolve(name))


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


def add_training_args(ap: argparse.ArgumentParser, out: str) -> None:
    """The arguments every training bench shares: model, data, the SFT recipe, held-out cap, seed, output folder."""
    ap.add_argument("--model", default=None, help="Registry name or directory (default: smollm2-135m for en, gemma3-270m for zh).")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=-1, help="Cap on optimiser steps per run (-1: epochs decide).")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-layers", type=int, default=None)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--test-max", type=int, default=None, help="Cap on held-out records per task (default: the task's).")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / out)


def prepare(args: argparse.Namespace, default_tasks: str) -> tuple[list[BenchTask], Path, dict[str, TaskData], Recipe]:
    """Logging on; the bench tasks, the model directory, each task's split data and the recipe from ``args``."""
    setup_logging()
    tasks = tasks_of(args.tasks or default_tasks)
    model = model_dir(args.model or MODELS[args.lang])
    data = {t.key: task_data(t, args.data, args.seed) for t in tasks}
    if args.test_max:
        data = {k: TaskData(d.train, d.test[: args.test_max], d.held_out_total, d.dev) for k, d in data.items()}
    recipe = Recipe(lr=args.lr, rank=args.rank, epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps,
                    top_layers=args.top_layers, max_seq_len=args.max_seq_len, seed=args.seed)
    return tasks, model, data, recipe
