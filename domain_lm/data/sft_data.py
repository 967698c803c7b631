"""SFT data: labelled records + task templates -> chat-format training examples.

One code path with the service: the user turns come from ``TaskTemplate.render_messages`` and the
assistant turn from ``TaskTemplate.target_text``, and the length filter uses the tokenizer's chat
template, so what the model is trained on is exactly what it is sent at inference.

Pipeline (``build_sft_data``): ``records.load_split`` (the one load -> dedupe -> split every stage
uses: by a seeded hash of the record or of its document, so adding data never moves old records)
-> render each train record with ``variants_per_example`` phrasings, a ``few_shot_fraction`` share
as few-shot prompts, in its language -> weight/cap tasks (or, with ``examples_per_task``, sample every
task to the same count) -> dedupe -> drop examples over ``max_seq_len`` tokens -> write
``train.jsonl`` (messages), ``eval.jsonl`` (messages) and ``eval_records.jsonl`` (inputs + gold
output, what the eval stage scores).

Targets are right-sized: the contract's JSON with only the fields it declares (dataset offsets are
dropped when records are read), keys in schema order, and grounded spans as the decode-time
constraint offers them (``OutputContract.training_value``: an evidence string cut mid-clause becomes
the shortest sentence or clause holding it), so the model learns answers it can write when served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from domain_lm.config import InstructSource, PipelineConfig
from domain_lm.data.records import (
    TaskRecord,
    dedupe_records,
    load_records,
    load_split,
    read_records,
    read_table,
    records_from_rows,
    split_records,
)
from domain_lm.errors import DataError
from domain_lm.tasks.errors import ContractError

log = logging.getLogger(__name__)

# Older names, kept for callers not yet on ``domain_lm.data.records`` (eval/stage.py, cli/eval.py, bench/).
Record = TaskRecord
load_task_records = load_records
read_eval_records = read_records
__all__ = [
    "BuildStats",
    "Record",
    "apply_weights",
    "balance_tasks",
    "build_sft_data",
    "data_hashes",
    "dedupe_records",
    "example_key",
    "instruct_examples",
    "load_task_records",
    "read_eval_records",
    "read_table",
    "records_from_rows",
    "render_example",
    "render_train_examples",
    "split_records",
    "token_length",
    "write_jsonl",
]


@dataclass
class BuildStats:
    records: dict[str, int] = field(default_factory=dict)  # task -> records read (after dedupe)
    train_records: dict[str, int] = field(default_factory=dict)
    eval_records: dict[str, int] = field(default_factory=dict)
    train_examples: dict[str, int] = field(default_factory=dict)  # task -> rendered examples kept
    few_shot: int = 0
    duplicates: int = 0
    too_long: int = 0
    bad_targets: int = 0  # records whose training answer breaks the contract (e.g. an evidence sentence over its maxLength)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it was skipped
    max_tokens: int = 0

    def as_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_examples": sum(self.train_examples.values()),
            "eval_records": sum(self.eval_records.values()),
            "few_shot_examples": self.few_shot,
            "duplicates_dropped": self.duplicates,
            "too_long_dropped": self.too_long,
            "bad_targets_dropped": self.bad_targets,
            "max_example_tokens": self.max_tokens,
        }
        for t, n in self.train_examples.items():
            out[f"train_examples/{t}"] = n
        return out


# --------------------------------------------------------------------------- rendering


def render_example(template: Any, record: TaskRecord, variant: int = 0, few_shot: int = 0) -> dict[str, Any]:
    """The chat example for one record: the service's prompt turns + the exact target answer."""
    messages = template.render_messages(record.inputs, lang=record.lang, variant=variant, few_shot=few_shot)
    answer = template.target_text(template.output.training_value(record.output, record.inputs, record.lang), lang=record.lang)
    return {
        "messages": [*messages, {"role": "assistant", "content": answer}],
        "task": record.task,
        "lang": record.lang,
        "variant": variant,
        "few_shot": few_shot,
    }


def render_train_examples(
    template: Any, records: list[TaskRecord], variants_per_example: int, few_shot_fraction: float, max_few_shot: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Render each record with ``variants_per_example`` distinct phrasings (seeded choice), some few-shot."""
    out = []
    for r in records:
        n_var = max(1, template.num_variants(r.lang))
        variants = rng.sample(range(n_var), min(variants_per_example, n_var))
        while len(variants) < variants_per_example:  # fewer phrasings than asked: repeat, few-shot makes them differ
            variants.append(rng.randrange(n_var))
        for v in variants:
            k = rng.randint(1, max_few_shot) if rng.random() < few_shot_fraction else 0
            out.append(render_example(template, r, variant=v, few_shot=k))
    return out


def apply_weights(examples: list[dict[str, Any]], weight: float, cap: int | None, rng: random.Random) -> list[dict[str, Any]]:
    """Scale one task's examples by ``weight`` (sampling down, or repeating up), then cap."""
    n = len(examples)
    target = int(round(n * weight))
    if target < n:
        examples = rng.sample(examples, target)
    elif target > n and n:
        examples = examples * (target // n) + rng.sample(examples, target % n)
    if cap is not None and len(examples) > cap:
        examples = rng.sample(examples, cap)
    return examples


def balance_tasks(
    template: Any, records: list[TaskRecord], count: int, sft: Any, rng: random.Random
) -> list[dict[str, Any]]:
    """Exactly ``count`` rendered examples of one task (task-balanced sampling): a seeded sample of
    its records when it has more, else every record, and again with other phrasings and few-shot
    prompts (``render_train_examples``) until the count is reached, so a small task is not drowned
    by a large one nor repeated word for word."""
    if not records:
        return []
    order = rng.sample(records, len(records))
    out: list[dict[str, Any]] = []
    while len(out) < count:
        # Repeats differ from the first pass: another seeded phrasing, and more often a few-shot prompt.
        share = sft.few_shot_fraction if not out else max(0.5, sft.few_shot_fraction)
        out += render_train_examples(template, order[: count - len(out)], 1, share, sft.max_few_shot, rng)
    return out


def example_key(ex: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ex["messages"], ensure_ascii=False).encode()).hexdigest()


def token_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a full conversation under the model's chat template (what training sees)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def instruct_examples(sources: list[InstructSource]) -> list[dict[str, Any]]:
    """User alpaca/sharegpt data as chat examples tagged task ``instruct:<name>``."""
    from domain_lm.data.instruct_formats import load_dataset_info, load_instruct_file

    out: list[dict[str, Any]] = []
    for src in sources:
        if src.formatting == "dataset_info":
            sets = load_dataset_info(src.path, src.names or None)
        else:
            sets = {Path(src.path).stem: load_instruct_file(src.path, src.formatting, src.columns or None)}
        for name, exs in sets.items():
            exs = exs[: src.max_examples] if src.max_examples else exs
            out += [{**e, "task": f"instruct:{name}", "lang": "auto", "variant": 0, "few_shot": 0} for e in exs]
    return out


def has_target(template: Any, record: TaskRecord) -> bool:
    """Whether the record's training answer fits the output contract (a dataset's gold can be valid
    while the decodable form the model is taught to write is not, e.g. a sentence over maxLength)."""
    try:
        template.target_text(template.output.training_value(record.output, record.inputs, record.lang), lang=record.lang)
    except ContractError as e:
        log.warning("task %s: a record is left out of the rendered examples: its answer breaks the contract: %s", template.name, e)
        return False
    return True


# --------------------------------------------------------------------------- build


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    from domain_lm.core import atomic

    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic.write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def build_sft_data(config: PipelineConfig, tokenizer: Any, out_dir: str | Path, registry: Any = None) -> BuildStats:
    """Build ``train.jsonl``, ``eval.jsonl`` and ``eval_records.jsonl`` in ``out_dir``; return stats."""
    sft = config.sft
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = BuildStats()
    rng = random.Random(config.tasks.seed)

    split = load_split(config, registry)
    stats.duplicates += split.duplicates
    train_by_task, held_by_task = split.train_by_task(), split.held_by_task()

    train_examples: list[dict[str, Any]] = []
    eval_examples: list[dict[str, Any]] = []
    eval_records: list[TaskRecord] = []
    for task, t in split.templates.items():
        train, held = train_by_task[task], held_by_task[task]
        stats.records[task], stats.eval_records[task] = len(train) + len(held), len(held)
        trainable = [r for r in train if has_target(t, r)]
        stats.bad_targets += len(train) - len(trainable)
        train, stats.train_records[task] = trainable, len(trainable)
        if sft.examples_per_task is not None:
            exs = balance_tasks(t, train, int(round(sft.examples_per_task * sft.task_weights.get(task, 1.0))), sft, rng)
        else:
            exs = render_train_examples(t, train, sft.variants_per_example, sft.few_shot_fraction, sft.max_few_shot, rng)
            exs = apply_weights(exs, sft.task_weights.get(task, 1.0), sft.max_examples_per_task, rng)
        train_examples += exs
        # Eval prompts are zero-shot, variant 0: the form the service sends by default.
        eval_examples += [render_example(t, r) for r in held if has_target(t, r)]
        eval_records += held
    train_examples += instruct_examples(sft.instruct_sources)

    # Dedupe rendered examples (a repeated record with the same phrasing adds nothing), keeping
    # deliberate up-weighting: repeats introduced by ``task_weights`` > 1 are allowed.
    kept, seen = [], Counter()
    allowed = {task: max(1, int(sft.task_weights.get(task, 1.0) + 0.999)) for task in split.templates}
    if sft.examples_per_task is not None:  # balanced: a small task's repeats are deliberate
        allowed = {task: sft.examples_per_task for task in split.templates}
    for ex in train_examples:
        k = example_key(ex)
        seen[k] += 1
        if seen[k] > allowed.get(ex["task"], 1):
            stats.duplicates += 1
            continue
        kept.append(ex)

    # Token-length filter with the model's own chat template.
    final = []
    for ex in kept:
        n = token_length(tokenizer, ex["messages"])
        if n > sft.train.max_seq_len:
            stats.too_long += 1
            continue
        stats.max_tokens = max(stats.max_tokens, n)
        final.append(ex)
    rng.shuffle(final)
    for ex in final:
        stats.train_examples[ex["task"]] = stats.train_examples.get(ex["task"], 0) + 1
        stats.few_shot += ex.get("few_shot", 0) > 0
    if not final:
        raise DataError("SFT build produced no training examples: check the task datasets and sft.train.max_seq_len.")

    write_jsonl(out / "train.jsonl", final)
    write_jsonl(out / "eval.jsonl", eval_examples)
    write_jsonl(out / "eval_records.jsonl", (r.to_json() for r in eval_records))
    (out / "stats.json").write_text(json.dumps(stats.__dict__, indent=2, ensure_ascii=False))
    return stats


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    """Content hashes of the external files SFT data is built from (for the stage fingerprint)."""
    from domain_lm.core.hashing import sha256_file
    from domain_lm.data.records import data_hashes as embedded_hashes

    out = embedded_hashes(config)  # the embedded demo datasets, when the config reads them
    for ds in config.tasks.datasets:
        if ds.path and Path(ds.path).is_file():
            out[f"tasks:{ds.task}:{ds.path}"] = sha256_file(ds.path)
    for src in config.sft.instruct_sources:
        p = Path(src.path)
        if p.is_file():
            out[f"instruct:{src.path}"] = sha256_file(p)
            if src.formatting == "dataset_info":
                for spec in json.loads(p.read_text(encoding="utf-8")).values():
                    f = p.parent / spec.get("file_name", "")
                    if f.is_file():
                        out[f"instruct:{f}"] = sha256_file(f)
    tdir = Path(config.tasks.templates_dir)
    if tdir.is_dir():
        for f in sorted(tdir.rglob("*")):
            if f.is_file():
                out[f"template:{f.relative_to(tdir)}"] = sha256_file(f)
    return out
