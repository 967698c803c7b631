"""Labelled task records and THE train/held-out split every stage uses.

``load_split(config, registry)`` reads the configured task datasets (JSONL/CSV with a field mapping)
or, with none configured, the demo data: the embedded real datasets (``data.embedded``: finance
tweets, Banking77, FIN NER, KPI-EDGAR, NLU++) and, only for tasks or languages without real data,
the code-generated synthetic examples (``data.demo_tasks``, marked ``dataset="synthetic"``). It
drops duplicate records and splits them train / held-out, once, for SFT data, preference pairs,
PPO prompts and the eval stage alike, so no stage trains on what another holds out. One record
type, ``TaskRecord``, from the file to the report.

The split is by a seeded hash of the record's *group* when it has one (an embedded record's
``doc``; a configured dataset's ``group_field``, e.g. FiNER-ORD ``doc_idx``: every sentence of one
document lands on the same side), else of the record's content. The hash is
``embedded.doc_is_heldout``, the one the corpus stage splits its documents with, so with the same
fraction and seed a held-out task document is held out of continued pretraining too. A record's
side depends only on that key and the seed, never on file order or on which other records exist,
so adding data never moves an old record across the split.

This module lives in ``data/`` (not ``tasks/``) because loading is a data concern: it reads files
with pandas, the demo generators and the pipeline config, none of which the serving path (which
imports ``tasks``) should depend on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain_lm.config import PipelineConfig, TaskDataset
from domain_lm.errors import DataError
from domain_lm.tasks import ContractError, InputError, TaskTemplate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRecord:
    """One labelled example of one task: template inputs, the typed gold output, and optionally the
    group (document) it comes from, which decides its side of the split."""

    task: str
    lang: str
    inputs: dict[str, Any]
    output: Any
    group: str | None = None
    #: Where the record comes from: an embedded dataset's name (``banking77/intents``), ``synthetic``
    #: (code-generated demo examples) or None (a configured file).
    dataset: str | None = None

    def key(self) -> str:
        """Content key: identical inputs of a task are one record (the dedupe unit)."""
        return hashlib.sha256(json.dumps([self.task, self.inputs], sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def split_key(self) -> str:
        """What decides the record's side: its group (document) when it has one, else its content."""
        return self.group if self.group is not None else self.key()

    def to_json(self) -> dict[str, Any]:
        out = {"task": self.task, "lang": self.lang, "inputs": self.inputs, "output": self.output}
        extra = {k: v for k, v in (("group", self.group), ("dataset", self.dataset)) if v is not None}
        return {**out, **extra}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "TaskRecord":
        return cls(row["task"], row["lang"], row["inputs"], row["output"], row.get("group"), row.get("dataset"))


@dataclass(frozen=True)
class Split:
    """Deduplicated records split train / held-out, in load order, with the template of each task."""

    templates: Mapping[str, TaskTemplate]  # every task that has records, in order of first appearance
    train: list[TaskRecord]
    held: list[TaskRecord]
    duplicates: int = 0  # records dropped because an earlier one had the same task and inputs

    def template(self, record: TaskRecord) -> TaskTemplate:
        return self.templates[record.task]

    def train_by_task(self) -> dict[str, list[TaskRecord]]:
        """Train records per task (every task of ``templates``, possibly empty)."""
        return _by_task(self.templates, self.train)

    def held_by_task(self) -> dict[str, list[TaskRecord]]:
        """Held-out records per task (every task of ``templates``, possibly empty)."""
        return _by_task(self.templates, self.held)


def _by_task(tasks: Iterable[str], records: list[TaskRecord]) -> dict[str, list[TaskRecord]]:
    out: dict[str, list[TaskRecord]] = {t: [] for t in tasks}
    for r in records:
        out[r.task].append(r)
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


def default_field_map(template: TaskTemplate, columns: Iterable[str]) -> dict[str, str]:
    """Template field -> column when the config gives none: same name, or ``text`` for a one-field task."""
    cols = set(columns)
    out = {f: f for f in template.inputs if f in cols}
    required = [f for f, spec in template.inputs.items() if spec.required] or list(template.inputs)
    missing = [f for f in required if f not in out]
    if len(missing) == 1 and "text" in cols and "text" not in out.values():
        out[missing[0]] = "text"
    return out


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


def _group(row: dict[str, Any], ds: TaskDataset) -> str | None:
    if ds.group_field is None:
        return None
    value = _clean(row[ds.group_field])
    if value is None or value == "" or (isinstance(value, float) and value != value):  # NaN: no group
        return None
    return f"{ds.group_field}={value}"


def records_from_rows(template: TaskTemplate, rows: list[dict[str, Any]], ds: TaskDataset) -> list[TaskRecord]:
    """Records of one task from table rows, via the dataset's field, label and group mapping."""
    if not rows:
        return []
    fmap = dict(ds.fields) or default_field_map(template, rows[0].keys())
    wanted = list(fmap.values()) + [ds.label_field] + ([ds.group_field] if ds.group_field else [])
    missing_cols = [c for c in wanted if c not in rows[0]]
    if missing_cols:
        raise DataError(
            f"Task {template.name!r} data {ds.path}: columns {missing_cols} are missing (columns are {sorted(rows[0])}). "
            f"Set `fields` (template field -> column; template fields are {list(template.inputs)}), `label_field` and `group_field`."
        )
    out, bad_outputs = [], 0
    for i, row in enumerate(rows):
        try:
            inputs = template.validate_inputs({f: _clean(row[c]) for f, c in fmap.items()})
        except InputError as e:  # skip the row, but say why
            log.warning("task %s row %d skipped: %s", template.name, i, e)
            continue
        try:
            output = template.coerce_output(map_label(_clean(row[ds.label_field]), ds.label_map))
        except ContractError as e:
            if template.choices(ds.lang) is not None:  # an unmapped label is a mapping error, not one bad row
                raise DataError(f"Task {template.name!r}: {e.message}. Map it with `label_map` in the task dataset config.") from None
            log.warning("task %s row %d skipped: its %s does not fit the output contract: %s", template.name, i, ds.label_field, e.message)
            bad_outputs += 1
            continue
        out.append(TaskRecord(template.name, ds.lang, inputs, output, _group(row, ds)))
    if bad_outputs and not out:
        raise DataError(f"Task {template.name!r} data {ds.path}: no row's {ds.label_field!r} fits the output contract (see the warnings).")
    return out


SYNTHETIC = "synthetic"


def embedded_records(template: TaskTemplate, datasets: Iterable[str]) -> list[TaskRecord]:
    """The examples of the embedded task datasets (of ``datasets``) made for ``template``, as records
    grouped by their document."""
    from domain_lm.data import embedded

    out = []
    for name in embedded.available("task", template.name):
        if name not in datasets:
            continue
        for ex in embedded.task_examples(name):
            try:
                inputs = template.validate_inputs(ex.inputs)
                output = template.coerce_output(ex.output)
            except (InputError, ContractError) as e:  # a template edited since the data was built
                log.warning("task %s: embedded %s example of %s skipped: %s", template.name, name, ex.doc, e)
                continue
            out.append(TaskRecord(template.name, ex.lang, inputs, output, group=ex.doc, dataset=name))
    return out


def synthetic_records(template: TaskTemplate, lang: str) -> list[TaskRecord]:
    """The code-generated (synthetic) demo examples of a bundled task in ``lang``."""
    from domain_lm.data.demo_tasks import demo_examples

    if lang not in template.languages:
        return []
    return [TaskRecord(template.name, lang, ex["inputs"], ex["output"], dataset=SYNTHETIC) for ex in demo_examples(template, lang)]


def demo_records_for(template: TaskTemplate, langs: Iterable[str], datasets: Iterable[str] = ()) -> list[TaskRecord]:
    """The demo records of a task: per language, the embedded real data when ``datasets`` has some
    for it, else the synthetic examples."""
    datasets = list(datasets)
    out: list[TaskRecord] = []
    for lang in langs:
        real = [r for r in embedded_records(template, datasets) if r.lang == lang]
        out += real or synthetic_records(template, lang)
    return out


def default_demo_tasks(config: PipelineConfig) -> list[str]:
    """The demo's tasks when ``tasks.demo_tasks`` is empty: those of ``tasks.demo_datasets``, in order.

    Tasks with no permissively licensed data (report_summary, key_points, business_line) are not
    among them: a demo task is scored on real held-out data or not at all.
    """
    from domain_lm.data import embedded

    return list(dict.fromkeys(embedded.info(name).task or "" for name in config.tasks.demo_datasets))


def load_records(config: PipelineConfig, registry: Any) -> list[TaskRecord]:
    """All labelled records of the configured datasets (or the demo data), in load order."""
    records: list[TaskRecord] = []
    demo_sets = config.tasks.demo_datasets
    if config.tasks.datasets:
        for ds in config.tasks.datasets:
            t = registry.get(ds.task)
            recs = demo_records_for(t, [ds.lang], demo_sets) if ds.path is None else records_from_rows(t, read_table(ds.path), ds)
            records += recs[: ds.max_examples] if ds.max_examples else recs
        return records
    for name in config.tasks.demo_tasks or default_demo_tasks(config):
        records += demo_records_for(registry.get(name), config.tasks.demo_langs, demo_sets)
    return records


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    """Content hashes of the embedded datasets the config's demo data may read (for stage fingerprints)."""
    from domain_lm.data import embedded

    if config.tasks.datasets and all(ds.path for ds in config.tasks.datasets):
        return {}
    return {f"embedded:{name}": embedded.info(name).content_sha256 for name in config.tasks.demo_datasets}


def read_records(path: str | Path) -> list[TaskRecord]:
    """Records written as JSON lines (``TaskRecord.to_json``), e.g. SFT's ``eval_records.jsonl``."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [TaskRecord.from_json(r) for r in rows]


# --------------------------------------------------------------------------- dedupe and split


def dedupe_records(records: list[TaskRecord]) -> tuple[list[TaskRecord], int]:
    """The first record of each (task, inputs), in order; and how many were dropped."""
    seen: set[str] = set()
    out = []
    for r in records:
        k = r.key()
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(records) - len(out)


def is_held_out(record: TaskRecord, eval_fraction: float, seed: int) -> bool:
    """The record's side: ``embedded.doc_is_heldout`` of its ``split_key`` (the rule the corpus stage
    holds documents out by), so a document is held out of every task and of pretraining alike."""
    from domain_lm.data.embedded import doc_is_heldout

    return doc_is_heldout(record.split_key(), eval_fraction, seed)


def split_records(records: list[TaskRecord], eval_fraction: float, seed: int) -> tuple[list[TaskRecord], list[TaskRecord]]:
    """(train, held-out), each in input order, by ``is_held_out``."""
    train: list[TaskRecord] = []
    held: list[TaskRecord] = []
    for r in records:
        (held if is_held_out(r, eval_fraction, seed) else train).append(r)
    return train, held


def load_split(config: PipelineConfig, registry: Any = None) -> Split:
    """Load -> dedupe -> split the configured task records (``tasks.eval_fraction``, ``tasks.seed``).

    ``registry`` defaults to the templates in ``tasks.templates_dir``.
    """
    if registry is None:
        from domain_lm.tasks import TemplateRegistry

        registry = TemplateRegistry.load(config.tasks.templates_dir)
    records, duplicates = dedupe_records(load_records(config, registry))
    train, held = split_records(records, config.tasks.eval_fraction, config.tasks.seed)
    templates = {task: registry.get(task) for task in dict.fromkeys(r.task for r in records)}
    return Split(templates=templates, train=train, held=held, duplicates=duplicates)
