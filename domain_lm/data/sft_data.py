"""SFT data: labelled records + task templates -> chat-format training examples.

One code path with the service: the user turns come from ``TaskTemplate.render_messages`` and the
assistant turn from ``TaskTemplate.target_text``, and the length filter uses the tokenizer's chat
template, so what the model is trained on is exactly what it is sent at inference.

Pipeline (``build_sft_data``): load records per dataset (JSONL/CSV with a field mapping, or the
built-in demo examples) -> split them train/eval by a seeded hash of the record (so duplicates
land in the same split and adding data never moves old records) -> render each train record with
``variants_per_example`` phrasings, a ``few_shot_fraction`` share as few-shot prompts, in its
language -> weight/cap tasks -> dedupe -> drop examples over ``max_seq_len`` tokens -> write
``train.jsonl`` (messages), ``eval.jsonl`` (messages) and ``eval_records.jsonl`` (inputs + gold
output, what the eval stage scores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from domain_lm.config import InstructSource, PipelineConfig, TaskDataset
from domain_lm.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One labelled example for one task: template inputs and the typed gold output."""

    task: str
    lang: str
    inputs: dict[str, Any]
    output: Any

    def key(self) -> str:
        """Content key: identical inputs of a task are one record (dedupe and split unit)."""
        return hashlib.sha256(json.dumps([self.task, self.inputs], sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "lang": self.lang, "inputs": self.inputs, "output": self.output}


@dataclass
class BuildStats:
    records: dict[str, int] = field(default_factory=dict)  # task -> records read (after dedupe)
    train_records: dict[str, int] = field(default_factory=dict)
    eval_records: dict[str, int] = field(default_factory=dict)
    train_examples: dict[str, int] = field(default_factory=dict)  # task -> rendered examples kept
    few_shot: int = 0
    duplicates: int = 0
    too_long: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it was skipped
    max_tokens: int = 0

    def as_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_examples": sum(self.train_examples.values()),
            "eval_records": sum(self.eval_records.values()),
            "few_shot_examples": self.few_shot,
            "duplicates_dropped": self.duplicates,
            "too_long_dropped": self.too_long,
            "max_example_tokens": self.max_tokens,
        }
        for t, n in self.train_examples.items():
            out[f"train_examples/{t}"] = n
        return out


# --------------------------------------------------------------------------- reading records


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON / CSV / TSV file (pandas)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"Task data file {p} does not exist. Pass the path of a JSONL or CSV file with one labelled example per row.")
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            df = pd.read_json(p, lines=True, dtype=False)
        elif suffix == ".json":
            df = pd.read_json(p, dtype=False)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        else:
            raise DataError(f"Task data file {p}: unsupported extension {suffix!r}; use .jsonl, .json, .csv or .tsv.")
    except ValueError as e:
        raise DataError(f"Task data file {p} could not be parsed: {e}") from None
    return df.to_dict(orient="records")


def _clean(v: Any) -> Any:
    """pandas/numpy scalars -> plain Python (so records are JSON-serialisable and hash stably)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def input_fields(template: Any) -> list[str]:
    return list(template.inputs)


def default_field_map(template: Any, columns: Iterable[str]) -> dict[str, str]:
    """Template field -> column when the config gives none: same name, or ``text`` for a one-field task."""
    cols = set(columns)
    out = {f: f for f in input_fields(template) if f in cols}
    required = [f for f, spec in template.inputs.items() if _required(spec)] or input_fields(template)
    missing = [f for f in required if f not in out]
    if len(missing) == 1 and "text" in cols and "text" not in out.values():
        out[missing[0]] = "text"
    return out


def _required(spec: Any) -> bool:
    if isinstance(spec, dict):
        return bool(spec.get("required", True))
    return bool(getattr(spec, "required", True))


def map_label(value: Any, label_map: dict[str, str]) -> Any:
    """Apply ``label_map`` to a label, or to the ``type`` of each entity in a list of entities.

    An entity type mapped to "" is dropped (a dataset type the task does not cover, e.g. MISC).
    """
    if not label_map:
        return value
    if isinstance(value, list):
        out = []
        for e in value:
            if isinstance(e, dict):
                t = label_map.get(str(e.get("type")), e.get("type"))
                if t == "":
                    continue
                e = {**e, "type": t}
            out.append(e)
        return out
    return label_map.get(str(value), value)


def coerce_output(template: Any, value: Any) -> Any:
    """Shape a raw gold value into the template's output type.

    Label tasks: match the canonical label case-insensitively. JSON tasks whose schema is an object
    with a single array property (e.g. ``{"entities": [...]}``) accept a bare list. List items keep
    only the keys the item schema declares (datasets carry offsets the contract does not ask for).
    """
    kind = template.output.kind
    if kind == "label":
        labels = list(template.output.labels or [])
        by_lower = {str(lab).lower(): lab for lab in labels}
        v = str(value).strip()
        if v in labels:
            return v
        if v.lower() in by_lower:
            return by_lower[v.lower()]
        raise DataError(f"Task {template.name!r}: label {value!r} is not one of {labels}. Map it with `label_map` in the task dataset config.")
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        schema = template.json_schema() or {}
        props = schema.get("properties") or {}
        if isinstance(value, list) and schema.get("type") == "array":
            item_props = (schema.get("items") or {}).get("properties")
            if item_props:
                value = [{k: e[k] for k in item_props if k in e} if isinstance(e, dict) else e for e in value]
        elif isinstance(value, list) and len(props) == 1:
            (name, spec), = props.items()
            if spec.get("type") == "array":
                item_props = (spec.get("items") or {}).get("properties")
                if item_props:
                    value = [{k: e[k] for k in item_props if isinstance(e, dict) and k in e} for e in value]
                value = {name: value}
        return value
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) else json.dumps(value, ensure_ascii=False)


def records_from_rows(template: Any, rows: list[dict[str, Any]], ds: TaskDataset) -> list[Record]:
    """Records of one task from table rows, via the dataset's field mapping and label mapping."""
    if not rows:
        return []
    fmap = dict(ds.fields) or default_field_map(template, rows[0].keys())
    missing_cols = [c for c in list(fmap.values()) + [ds.label_field] if c not in rows[0]]
    if missing_cols:
        raise DataError(
            f"Task {template.name!r} data {ds.path}: columns {missing_cols} are missing (columns are {sorted(rows[0])}). "
            f"Set `fields` (template field -> column; template fields are {input_fields(template)}) and `label_field`."
        )
    out = []
    for i, row in enumerate(rows):
        inputs = {f: _clean(row[c]) for f, c in fmap.items()}
        try:
            inputs = template.validate_inputs(inputs)
            output = coerce_output(template, map_label(_clean(row[ds.label_field]), ds.label_map))
        except DataError:
            raise
        except Exception as e:  # InputError from the template: skip the row, but say why once
            log.warning("task %s row %d skipped: %s", template.name, i, e)
            continue
        out.append(Record(template.name, ds.lang, inputs, output))
    return out


def load_task_records(config: PipelineConfig, registry: Any) -> list[Record]:
    """All labelled records of the configured datasets (or the built-in demo examples)."""
    records: list[Record] = []
    if config.tasks.datasets:
        for ds in config.tasks.datasets:
            t = registry.get(ds.task)
            if ds.path is None:
                recs = demo_records_for(t, [ds.lang])
            else:
                recs = records_from_rows(t, read_table(ds.path), ds)
            records += recs[: ds.max_examples] if ds.max_examples else recs
        return records
    names = config.tasks.demo_tasks or registry.names()
    for name in names:
        records += demo_records_for(registry.get(name), list(config.tasks.demo_langs))
    return records


def demo_records_for(template: Any, langs: list[str]) -> list[Record]:
    from domain_lm.data.demo_tasks import demo_examples

    out = []
    for lang in langs:
        if lang not in (template.languages or ["en"]):
            continue
        for ex in demo_examples(template, lang):
            out.append(Record(template.name, lang, ex["inputs"], ex["output"]))
    return out


def dedupe_records(records: list[Record]) -> tuple[list[Record], int]:
    seen: set[str] = set()
    out = []
    for r in records:
        k = r.key()
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(records) - len(out)


def split_records(records: list[Record], eval_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic split by a seeded hash of each record's content.

    A record's side depends only on its content and the seed, not on file order or on which other
    records exist, so appending data never moves an old eval record into training.
    """
    train, held = [], []
    for r in records:
        h = int(hashlib.sha256(f"{seed}:{r.key()}".encode()).hexdigest()[:12], 16) / float(16**12)
        (held if h < eval_fraction else train).append(r)
    return train, held


# --------------------------------------------------------------------------- rendering


def render_example(template: Any, record: Record, variant: int = 0, few_shot: int = 0) -> dict[str, Any]:
    """The chat example for one record: the service's prompt turns + the exact target answer."""
    messages = template.render_messages(record.inputs, lang=record.lang, variant=variant, few_shot=few_shot)
    answer = template.target_text(record.output, lang=record.lang)
    return {
        "messages": [*messages, {"role": "assistant", "content": answer}],
        "task": record.task,
        "lang": record.lang,
        "variant": variant,
        "few_shot": few_shot,
    }


def render_train_examples(template: Any, records: list[Record], variants_per_example: int, few_shot_fraction: float, max_few_shot: int, rng: random.Random) -> list[dict[str, Any]]:
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


# --------------------------------------------------------------------------- build


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    from domain_lm import atomic

    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic.write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def build_sft_data(config: PipelineConfig, tokenizer: Any, out_dir: str | Path, registry: Any = None) -> BuildStats:
    """Build ``train.jsonl``, ``eval.jsonl`` and ``eval_records.jsonl`` in ``out_dir``; return stats."""
    if registry is None:
        from domain_lm.tasks import TemplateRegistry

        registry = TemplateRegistry.load(config.tasks.templates_dir)
    sft = config.sft
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = BuildStats()
    rng = random.Random(config.tasks.seed)

    records, dups = dedupe_records(load_task_records(config, registry))
    stats.duplicates += dups
    by_task: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_task[r.task].append(r)

    train_examples: list[dict[str, Any]] = []
    eval_examples: list[dict[str, Any]] = []
    eval_records: list[Record] = []
    for task, recs in by_task.items():
        t = registry.get(task)
        train, held = split_records(recs, config.tasks.eval_fraction, config.tasks.seed)
        stats.records[task], stats.train_records[task], stats.eval_records[task] = len(recs), len(train), len(held)
        exs = render_train_examples(t, train, sft.variants_per_example, sft.few_shot_fraction, sft.max_few_shot, rng)
        exs = apply_weights(exs, sft.task_weights.get(task, 1.0), sft.max_examples_per_task, rng)
        train_examples += exs
        # Eval prompts are zero-shot, variant 0: the form the service sends by default.
        eval_examples += [render_example(t, r) for r in held]
        eval_records += held
    train_examples += instruct_examples(sft.instruct_sources)

    # Dedupe rendered examples (a repeated record with the same phrasing adds nothing), keeping
    # deliberate up-weighting: repeats introduced by ``task_weights`` > 1 are allowed.
    kept, seen = [], Counter()
    allowed = {task: max(1, int(sft.task_weights.get(task, 1.0) + 0.999)) for task in by_task}
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


def read_eval_records(path: str | Path) -> list[Record]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Record(r["task"], r["lang"], r["inputs"], r["output"]) for r in rows]


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    """Content hashes of the external files SFT data is built from (for the stage fingerprint)."""
    from domain_lm.hashing import sha256_file

    out = {}
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
