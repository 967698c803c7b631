"""The evaluation harness: run a task template over labelled records through an inference engine.

Every prediction goes through ``TaskRunner`` with the template's output contract enforced (choices
for label tasks, the JSON schema for json tasks), exactly as the service answers. An output that
breaks the contract is kept as an *invalid* prediction (``None``) and scored as wrong, with its raw
text saved for inspection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    output: Any  # typed value, None when the output broke the contract
    raw: str
    error: str | None = None
    tokens: int = 0  # generated tokens of the answer (0 when unknown)


def predict(
    engine: Any,
    template: Any,
    inputs: Sequence[dict[str, Any]],
    lang: str = "en",
    adapter: str | None = None,
    batch_size: int = 64,
    max_tokens: int | None = None,
) -> list[Prediction]:
    """Answers for ``inputs`` through ``TaskRunner``; a broken contract becomes an invalid prediction.

    ``max_tokens`` caps generation (never above the template's own hint, and never below what its
    contract needs: a label task keeps room for its longest label); an answer cut off by the cap
    fails its contract and counts as invalid.
    """
    from domain_lm.inference.tasks import TaskRunner

    runner = TaskRunner(engine, max_tokens=task_cap(template, max_tokens))
    out: list[Prediction] = []
    for start in range(0, len(inputs), batch_size):
        chunk = list(inputs[start : start + batch_size])
        out += [to_prediction(template, a) for a in runner.run_batch(template, chunk, lang=lang, adapter=adapter, return_exceptions=True)]
    return out


def task_cap(template: Any, max_tokens: int | None) -> int | None:
    """The generation cap of a task: ``max_tokens``, never above the template's own hint."""
    return None if max_tokens is None else min(max_tokens, template.output.max_tokens or max_tokens)


def to_prediction(template: Any, answer: Any) -> Prediction:
    """A ``TaskRunner`` answer, or the contract / input error it raised, as a prediction."""
    from domain_lm.tasks import ContractError, InputError

    if isinstance(answer, ContractError):
        # An ungrounded answer (UngroundedError) keeps its value: its ungrounded spans count as wrong
        # and in the contract's ungrounded metric; any other broken contract scores None.
        return Prediction(getattr(answer, "value", None), getattr(answer, "raw", "") or "", str(answer))
    if isinstance(answer, InputError):
        # The record does not fit the template (e.g. too long): no answer, so it scores as wrong.
        log.warning("task %s: input rejected: %s", template.name, answer)
        return Prediction(None, "", f"input rejected: {answer}")
    if isinstance(answer, BaseException):
        raise answer
    return Prediction(answer.output, answer.raw_text, tokens=answer.usage.completion_tokens)


def score_predictions(template: Any, golds: Sequence[Any], preds: Sequence[Prediction], lang: str | None = "en") -> dict[str, Any]:
    """The task metric, through the template's contract (which decides what it compares)."""
    return template.score(list(golds), [x.output for x in preds], lang=lang)


def evaluate_records(
    engine: Any, template: Any, records: Sequence[Any], adapter: str | None = None, keep_examples: int = 5, max_tokens: int | None = None
) -> dict[str, Any]:
    """Score ``records`` (with ``.inputs``, ``.output``, ``.lang``) for one template; languages kept apart
    in generation but scored together. Adds ``latency_ms`` per example and a few sample outputs."""
    if not records:
        return {"n": 0, "skipped": "no held-out records"}
    preds: list[Prediction | None] = [None] * len(records)
    t0 = time.perf_counter()
    for lang in sorted({r.lang for r in records}):
        idx = [i for i, r in enumerate(records) if r.lang == lang]
        for i, p in zip(
            idx, predict(engine, template, [records[i].inputs for i in idx], lang=lang, adapter=adapter, max_tokens=max_tokens)
        ):
            preds[i] = p
    return summarize(template, records, preds, time.perf_counter() - t0, keep_examples)  # type: ignore[arg-type]


def records_lang(records: Sequence[Any]) -> str | None:
    """The one language of ``records`` (None when mixed: metrics then tokenise per text)."""
    langs = {r.lang for r in records}
    return langs.pop() if len(langs) == 1 else None


def summarize(template: Any, records: Sequence[Any], preds: Sequence[Prediction], elapsed: float, keep_examples: int = 5) -> dict[str, Any]:
    """The task metric of ``preds`` against ``records``, ``latency_ms`` per example (``elapsed``
    seconds spread over them) and a few sample and invalid outputs."""
    scores = score_predictions(template, [r.output for r in records], preds, lang=records_lang(records))
    scores["latency_ms"] = 1000 * elapsed / max(1, len(records))
    scores["samples"] = [
        {"inputs": r.inputs, "gold": r.output, "pred": p.output, "raw": p.raw[:500], **({"error": p.error[:300]} if p.error else {})}
        for r, p in list(zip(records, preds))[:keep_examples]
    ]
    scores["invalid_samples"] = [{"raw": p.raw[:300], "error": (p.error or "")[:300]} for p in preds if p is not None and p.output is None][
        :keep_examples
    ]
    return scores


def baseline_text(inputs: dict[str, Any]) -> str:
    """The text a classical classifier sees: every string input, joined."""
    return " \n".join(str(v) for v in inputs.values() if isinstance(v, (str, int, float)))


def baseline_predict(template: Any, train: Sequence[Any], test: Sequence[Any], seed: int = 42) -> list[str] | None:
    """TF-IDF + LR labels for ``test``, fitted on ``train`` records, for a task with a closed answer set
    (labels); None for other tasks or when the training records hold a single class."""
    from domain_lm.eval.baseline import fit_predict

    if template.output.classes is None or not test:
        return None
    langs = {r.lang for r in test}
    return fit_predict(
        [baseline_text(r.inputs) for r in train],
        [r.output for r in train],
        [baseline_text(r.inputs) for r in test],
        lang="zh" if langs == {"zh"} else "en",
        seed=seed,
    )


def evaluate_baseline(template: Any, train: Sequence[Any], test: Sequence[Any], seed: int = 42) -> dict[str, Any] | None:
    """The baseline's scores on ``test`` (see ``baseline_predict``); None for tasks without labels."""
    from domain_lm.tasks.metrics import classification_scores

    if template.output.classes is None or not test:
        return None
    pred = baseline_predict(template, train, test, seed)
    if pred is None:
        return {"skipped": "needs at least two classes in the training split", "n": len(test)}
    scores = classification_scores([r.output for r in test], pred, template.output.classes)
    scores["train_n"] = len(train)
    return scores


def engine_options(kind: str, gpu_memory_utilization: float = 0.1, max_model_len: int = 2048) -> dict[str, Any]:
    """Options for ``create_engine``: vLLM needs a memory share and float32 / eager mode on CPU."""
    if resolve_kind(kind) == "vllm":
        return {"gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len}
    return {}


def resolve_kind(kind: str) -> str:
    from domain_lm.inference import vllm_available

    return kind if kind != "auto" else ("vllm" if vllm_available() else "hf")


def evaluate_model(
    model_path: str | Path,
    tasks: dict[str, tuple[Any, Sequence[Any]]],
    kind: str = "auto",
    adapters: dict[str, str] | None = None,
    adapter: str | None = None,
    max_tokens: int | dict[str, int] | None = None,
    **engine_opts: Any,
) -> dict[str, dict[str, Any]]:
    """Open one engine for ``model_path`` and score every ``task -> (template, records)``.

    ``max_tokens``: one generation cap for json/text tasks, or a cap per task name."""
    from domain_lm.inference import create_engine

    kind = resolve_kind(kind)
    engine = create_engine(model_path, kind=kind, adapters=adapters, **engine_opts)
    try:
        caps = max_tokens if isinstance(max_tokens, dict) else {name: max_tokens for name in tasks}
        return {name: evaluate_records(engine, t, recs, adapter=adapter, max_tokens=caps.get(name)) for name, (t, recs) in tasks.items()}
    finally:
        engine.close()


# --------------------------------------------------------------------------- every system at once

#: ``{system: {task: predictions}}``: what ``predict_all`` returns.
Predictions = dict[str, dict[str, list[Prediction]]]


def predict_all(
    engine: Any,
    systems: dict[str, str | None],
    tasks: dict[str, tuple[Any, Sequence[Any]]],
    max_tokens: int | dict[str, int | None] | None = None,
) -> tuple[Predictions, float]:
    """Answer every ``system x task x record`` on one engine, all submitted at once.

    ``systems`` maps a name to the engine adapter that serves it (None: the engine's own model).
    Every request is in flight together, so vLLM's continuous batching keeps its batch full across
    tasks and adapters, and requests of one task share their templated prefix in its prefix cache.
    Each answer goes through ``TaskRunner`` (contract, budget retry) as the service answers it.
    Returns the predictions and the wall time in seconds.
    """
    import asyncio

    from domain_lm.core.progress import task as progress_task
    from domain_lm.inference.tasks import TaskRunner

    caps = max_tokens if isinstance(max_tokens, dict) else {name: max_tokens for name in tasks}
    runners = {name: TaskRunner(engine, max_tokens=task_cap(t, caps.get(name))) for name, (t, _) in tasks.items()}
    jobs = [(system, name, r) for system in systems for name, (_, recs) in tasks.items() for r in recs]

    with progress_task(f"eval: {', '.join(systems)}", total=len(jobs)) as advance:

        async def one(system: str, name: str, record: Any) -> Any:
            try:
                return await runners[name].arun(tasks[name][0], record.inputs, record.lang, systems[system])
            finally:
                advance()

        async def answer_all() -> list[Any]:
            return await asyncio.gather(*(one(*job) for job in jobs), return_exceptions=True)

        t0 = time.perf_counter()
        answers = asyncio.run(answer_all())
        elapsed = time.perf_counter() - t0
    out: Predictions = {system: {name: [] for name in tasks} for system in systems}
    for (system, name, _), answer in zip(jobs, answers):
        out[system][name].append(to_prediction(tasks[name][0], answer))
    return out, elapsed
