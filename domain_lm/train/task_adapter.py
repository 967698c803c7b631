"""A per-task LoRA adapter from a user's labelled examples, trained while the service keeps serving.

Reads top to bottom: the uploaded file -> records (the pipeline's field / label mapping, every row
checked, ``parse_examples``) -> SFT examples through the template (``sft_data.render_example``,
the rendering the service sends) -> ``train.sft.train_sft`` on the serving model -> the adapter.

Training runs in a child process (``train_in_subprocess``): its memory is returned when it ends,
it is given its own thread count (``TeachConfig.threads``, default 1, so the service keeps a core
to answer with), and it can be stopped (cancel) without touching the service. Progress comes back
through the trainer's JSON-lines log. ``python -m domain_lm.train.task_adapter SPEC.json`` is that
child's entry point.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain_lm.config import LoraSection, PeftSection, SftSection, TaskDataset
from domain_lm.data.records import TaskRecord, default_field_map, records_from_rows
from domain_lm.errors import DataError, DomainLMError
from domain_lm.tasks import InputError, TaskTemplate

log = logging.getLogger(__name__)

#: Problems listed in an upload's error (the count says how many there were in all).
MAX_PROBLEMS = 10
Format = Literal["jsonl", "csv", "json"]


class TeachConfig(BaseModel):
    """How a task is taught: the split, the adapter's LoRA and training loop, what is evaluated."""

    model_config = ConfigDict(extra="forbid")

    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the examples held out for every score.")
    seed: int = 42
    min_examples: int = Field(20, ge=4, description="Fewest distinct examples an upload may have.")
    max_eval: int = Field(200, ge=10, description="Held-out examples each system is scored on (the first ones, in file order).")
    adapter: bool = Field(True, description="Train a LoRA adapter (False: examples for few-shot and the classical model only).")
    compare: bool = Field(True, description="Also score zero-shot and few-shot base-model answers (after the adapter serves).")
    few_shot_k: int = Field(4, ge=1, le=16, description="Examples in a few-shot prompt when the template does not say.")
    max_scored_choices: int = Field(16, ge=2, description="Label tasks with more labels answer without per-label scores.")
    n_boot: int = Field(1000, ge=100, le=10_000, description="Bootstrap resamples for the 95% intervals.")
    # the adapter
    lora_r: int = Field(8, ge=1, le=64)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    top_layers: int | None = Field(
        8, ge=1, description="LoRA on the top N layers only: backward stops there, about half the cost of all layers on a CPU; None: all."
    )
    learning_rate: float = Field(1e-3, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Cap on optimiser steps (wins over epochs when smaller).")
    batch_size: int = Field(8, ge=1)
    max_seq_len: int = Field(256, ge=32, description="Longer rendered examples are left out of training.")
    threads: int = Field(1, ge=1, description="CPU threads the training process may use.")
    timeout_s: float = Field(3600, gt=0, description="Training is stopped (the job fails) after this long.")


class ParsedUpload(BaseModel):
    """What an upload held: the valid records, and the problems (row number from 1, message)."""

    rows: int
    records: list[Any]
    problems: list[tuple[int, str]] = Field(default_factory=list)
    problem_count: int = 0


# --------------------------------------------------------------------------- upload -> records


def read_rows(data: bytes, fmt: Format) -> list[dict[str, Any]]:
    """Rows of an uploaded JSONL / JSON / CSV file; ``DataError`` naming the line that does not parse."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"the file is not UTF-8 text (byte {e.start} cannot be decoded)") from None
    if fmt == "csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise DataError(f"the CSV file cannot be read: {e}") from None
        if rows and None in rows[0]:
            raise DataError("the CSV file has a row with more values than the header has columns")
        return rows
    if fmt == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"the JSON file does not parse: {e.msg} at line {e.lineno}") from None
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise DataError("a JSON upload must be a list of objects, one per example")
        return value
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line {n} is not JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"line {n} is not a JSON object")
        rows.append(row)
    return rows


def parse_examples(template: TaskTemplate, rows: list[dict[str, Any]], mapping: TaskDataset) -> ParsedUpload:
    """Every row through the pipeline's mapping (``records_from_rows``, as the configs' ``tasks.datasets``),
    one at a time so each bad row is named; a missing column is one problem for the whole file."""
    if not rows:
        return ParsedUpload(rows=0, records=[], problems=[(0, "the file holds no examples")], problem_count=1)
    fmap = dict(mapping.fields) or default_field_map(template, rows[0].keys())
    unmapped = [f for f, spec in template.inputs.items() if spec.required and f not in fmap]
    if unmapped:
        why = (
            f"no column for the input(s) {unmapped} (columns are {sorted(rows[0])}); name them with `fields` "
            f"(template input -> column), e.g. {{{unmapped[0]!r}: {sorted(rows[0])[0]!r}}}"
        )
        return ParsedUpload(rows=len(rows), records=[], problems=[(1, why)], problem_count=1)
    records: list[TaskRecord] = []
    problems: list[tuple[int, str]] = []
    count = 0
    for i, row in enumerate(rows, 1):
        why = None
        try:
            got = records_from_rows(template, [row], mapping)
        except DataError as e:
            if i == 1 and " are missing (columns are " in str(e):  # the file's shape, not one row: one problem for all
                return ParsedUpload(rows=len(rows), records=[], problems=[(i, str(e))], problem_count=1)
            why, got = str(e), []
        if not got and why is None:
            try:
                template.validate_inputs({f: row.get(c) for f, c in fmap.items()})
                why = "the row was skipped"
            except InputError as e:
                why = f"input {e.field!r}: {e.message}"
        if got:
            records.append(got[0])
        else:
            count += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append((i, why or "invalid row"))
    return ParsedUpload(rows=len(rows), records=records, problems=problems, problem_count=count)


# --------------------------------------------------------------------------- records -> SFT examples


class TrainSpec(BaseModel):
    """Everything the training process needs (written as JSON for the child)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str
    template_yaml: str
    records_path: str
    out_dir: str
    work_dir: str
    config: TeachConfig


def sft_section(cfg: TeachConfig, steps: int) -> SftSection:
    """The SFT settings for one task adapter: LoRA as configured, ``steps`` optimiser steps, a log row per step."""
    return SftSection(
        peft=PeftSection(lora=LoraSection(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout), top_layers=cfg.top_layers),
        few_shot_fraction=0.0,
        train=dict(  # validated into the SFT stage's own train section (its defaults)
            learning_rate=cfg.learning_rate,
            max_steps=steps,
            batch_size=cfg.batch_size,
            max_seq_len=cfg.max_seq_len,
            warmup_ratio=0.05,
            logging_steps=1,
            save_steps=10**6,  # one job, no resume: no checkpoints
            seed=cfg.seed,
        ),
    )


def planned_steps(n_examples: int, cfg: TeachConfig) -> int:
    steps = max(1, math.ceil(n_examples * cfg.epochs / cfg.batch_size))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def sft_examples(template: TaskTemplate, records: list[TaskRecord], tokenizer: Any, max_seq_len: int, seed: int) -> list[dict[str, Any]]:
    """Each record rendered once, zero-shot, in a seeded random phrasing (the SFT renderer), without
    those over ``max_seq_len`` tokens (the model's chat template counts them, as training does)."""
    from domain_lm.data.sft_data import has_target, render_train_examples, token_length

    records = [r for r in records if has_target(template, r)]  # a gold whose taught form breaks the contract: left out
    if not records:
        raise DataError(f"no example's answer fits the output contract of task {template.name!r} (see the warnings for why)")
    exs = render_train_examples(template, records, 1, 0.0, 1, random.Random(seed))
    kept = [e for e in exs if token_length(tokenizer, e["messages"]) <= max_seq_len]
    if not kept:
        raise DataError(f"every example is longer than max_seq_len={max_seq_len} tokens once rendered; raise it or shorten the inputs")
    return kept


def _as_dict(result: Any) -> dict[str, Any]:
    """``train_sft``'s result (a dataclass, or a dict from older versions) as a dict without the log rows."""
    out = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    out.pop("history", None)
    return out


def train_adapter(spec: TrainSpec) -> dict[str, Any]:
    """Train the task adapter in this process; returns the trainer's metrics (``history`` left out)."""
    from domain_lm.data.records import read_records
    from domain_lm.models.loading import load_tokenizer
    from domain_lm.train.sft import train_sft

    template = TaskTemplate.from_yaml(spec.template_yaml)
    records = read_records(spec.records_path)
    tok = load_tokenizer(spec.model_path)
    examples = sft_examples(template, records, tok, spec.config.max_seq_len, spec.config.seed)
    steps = planned_steps(len(examples), spec.config)
    Path(spec.work_dir, "plan.json").write_text(json.dumps({"steps": steps, "examples": len(examples)}))
    t0 = time.perf_counter()
    result = train_sft(
        spec.model_path, examples, sft_section(spec.config, steps), spec.work_dir, spec.out_dir, description=f"teach {template.name}"
    )
    return {**_as_dict(result), "planned_steps": steps, "train_examples": len(examples), "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- in a child process

#: (fraction done or None, message) while training.
TrainProgress = Callable[[float | None, str], None]


class TrainingFailed(DomainLMError):
    """The training process failed, timed out or was cancelled."""


def _progress(work: Path) -> tuple[float | None, str]:
    try:
        plan = json.loads((work / "plan.json").read_text())
    except (OSError, ValueError):
        return None, "preparing the training data"
    step, loss = 0, None
    try:
        for line in (work / "log.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            step = max(step, int(row.get("step", 0)))
            loss = row.get("loss", loss)
    except (OSError, ValueError):
        pass
    total = max(1, int(plan["steps"]))
    tail = f", loss {float(loss):.3f}" if isinstance(loss, (int, float)) else ""
    return min(1.0, step / total), f"step {step}/{total} on {plan['examples']} examples{tail}"


def train_in_subprocess(spec: TrainSpec, progress: TrainProgress, cancelled: threading.Event | None = None) -> dict[str, Any]:
    """Run ``train_adapter`` in a child process with ``spec.config.threads`` threads; report progress
    every second; ``TrainingFailed`` on error, timeout or ``cancelled``. The child's output goes to
    ``work_dir/train.log``."""
    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(spec.model_dump_json())
    threads = str(spec.config.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "DOMAIN_LM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
    deadline = time.monotonic() + spec.config.timeout_s
    with (work / "train.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(work / "spec.json")], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                if cancelled is not None and cancelled.wait(1.0):
                    raise TrainingFailed("the job was cancelled")
                if cancelled is None:
                    time.sleep(1.0)
                if time.monotonic() > deadline:
                    raise TrainingFailed(f"training took longer than {spec.config.timeout_s:g}s")
                progress(*_progress(work))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    result_path = work / "result.json"
    if proc.returncode != 0 or not result_path.is_file():
        raise TrainingFailed(f"training failed (exit {proc.returncode}): {_last_error(work / 'train.log')}")
    return json.loads(result_path.read_text())


def _last_error(log_file: Path) -> str:
    """The child's last error line (never its data: only exception lines are looked for)."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln and not ln.startswith(" ") and ("Error" in ln or "Exception" in ln)]
    return (errors[-1] if errors else "see the training log")[:300]


def main(argv: list[str]) -> int:
    spec = TrainSpec.model_validate_json(Path(argv[0]).read_text())
    try:
        import torch

        torch.set_num_threads(spec.config.threads)
        result = train_adapter(spec)
    except DomainLMError as e:
        print(f"DataError: {e}", file=sys.stderr)
        return 2
    Path(spec.work_dir, "result.json").write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
