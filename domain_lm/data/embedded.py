"""The embedded datasets: small, redistributable subsets of real bank/finance data shipped in the package.

``domain_lm/resources/datasets/<source>/<stem>.jsonl.gz`` holds one JSON object per line; every
record has a ``doc`` id (the unit a train/held-out split must never cut through: a tweet, a
customer query, a loan agreement, a company's 10-K filings, a TAT-QA report context, a dialogue).
``manifest.json`` says what each file is (task data, preference pairs or corpus text), and
``README.md`` gives the source, authors, licence and transformation of each (every folder also
carries its upstream LICENSE). ``python -m domain_lm.data.embedded build`` regenerates them from
``../shared/data`` (see ``domain_lm.data.embedded_build``).

Two views of a task dataset:

* ``records(name)``: the stored rows as they are (upstream labels, entity offsets, ...);
* ``task_examples(name)``: ``TaskExample`` objects shaped for the dataset's task template
  (template inputs and gold output, upstream labels mapped to the template's labels).

Splits are by document with a seeded hash (``doc_is_heldout`` / ``split_by_doc``): a document's
side depends only on its id and the seed, so the same document is held out of every task and of
the pretraining corpus alike.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from domain_lm.errors import DataError

Kind = Literal["task", "preference", "corpus"]
CorpusPart = Literal["domain", "general_replay", "general_heldout"]
CORPUS_PARTS: tuple[str, ...] = ("domain", "general_replay", "general_heldout")
MANIFEST = "manifest.json"
HELDOUT_FRACTION = 0.2
SEED = 42

#: Upstream labels -> the task template's canonical labels (datasets not listed keep their labels).
LABEL_MAPS: dict[str, dict[str, str]] = {
    "twitter_fin_sentiment/sentiment": {"bearish": "negative", "bullish": "positive", "neutral": "neutral"},
    # Two upstream Banking77 category names are spelled unlike the other 75.
    "banking77/intents": {"Refund_not_showing_up": "refund_not_showing_up", "reverted_card_payment?": "reverted_card_payment"},
}

T = TypeVar("T")


class DatasetInfo(BaseModel):
    """One embedded file, as listed in ``manifest.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # "<source>/<stem>", e.g. "banking77/intents"
    file: str  # path relative to the datasets directory
    kind: Kind
    task: str | None = None  # template name, for kind "task"
    part: CorpusPart | None = None  # for kind "corpus"
    source: str  # the folder, which holds the upstream LICENSE
    records: int
    docs: int
    content_sha256: str  # of the decompressed JSONL (stable across zlib builds, unlike the .gz bytes)


class TaskExample(BaseModel):
    """One labelled example shaped for its task template: ``template.validate_inputs(inputs)`` and
    ``template.target_text(output)`` accept it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    lang: str
    doc: str
    inputs: dict[str, Any]
    output: Any
    dataset: str


def embedded_dir() -> Path:
    """The directory holding the embedded datasets (inside the installed package)."""
    return Path(__file__).resolve().parents[1] / "resources" / "datasets"


@lru_cache(maxsize=4)
def _manifest(root: Path) -> dict[str, DatasetInfo]:
    path = root / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"The embedded dataset manifest {path} cannot be read ({e}). Reinstall domain-lm or rebuild the data.") from None
    return {name: DatasetInfo(name=name, **entry) for name, entry in raw["datasets"].items()}


def manifest(root: Path | None = None) -> dict[str, DatasetInfo]:
    """Every embedded dataset by name."""
    return _manifest(root or embedded_dir())


def available(kind: Kind | None = None, task: str | None = None) -> list[str]:
    """Names of the embedded datasets, optionally only those of one kind or one task template."""
    return sorted(n for n, i in manifest().items() if (kind is None or i.kind == kind) and (task is None or i.task == task))


def info(name: str) -> DatasetInfo:
    """The manifest entry of ``name``; ``DataError`` listing the known names if there is none."""
    try:
        return manifest()[name]
    except KeyError:
        raise DataError(f"No embedded dataset {name!r}; available: {', '.join(available())}.") from None


def read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a gzip-compressed JSON Lines file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=32)
def _records(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(read_jsonl_gz(path))


def records(name: str) -> list[dict[str, Any]]:
    """The stored rows of dataset ``name`` (fresh dicts: callers may modify them)."""
    path = embedded_dir() / info(name).file
    return [json.loads(json.dumps(r)) for r in _records(path)]


# --------------------------------------------------------------------------- task view


def _label(name: str, row: dict[str, Any]) -> Any:
    return LABEL_MAPS.get(name, {}).get(row["label"], row["label"])


def _entities(name: str, row: dict[str, Any]) -> Any:
    # The entities template answers text + type; the offsets stay in the stored rows.
    return [{"text": e["text"], "type": e["type"]} for e in row["entities"]]


def _extraction_inputs(row: dict[str, Any]) -> dict[str, Any]:
    inputs = {"text": row["text"], "field": row["field"]}
    if row.get("period") is not None:
        inputs["period"] = row["period"]
    return inputs


#: task template -> (inputs of a row, gold output of a row)
_SHAPES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[str, dict[str, Any]], Any]]] = {
    "sentiment": (lambda r: {"text": r["text"]}, _label),
    "customer_intent": (lambda r: {"text": r["text"]}, _label),
    "entities": (lambda r: {"text": r["text"]}, _entities),
    "extraction": (_extraction_inputs, lambda name, r: r["answer"]),
}


def task_examples(name: str) -> list[TaskExample]:
    """The rows of task dataset ``name`` shaped for its template (inputs + gold output)."""
    meta = info(name)
    if meta.kind != "task" or meta.task not in _SHAPES:
        raise DataError(
            f"Embedded dataset {name!r} is {meta.kind} data, not a task dataset; task datasets: {', '.join(available('task'))}."
        )
    inputs_of, output_of = _SHAPES[meta.task]
    return [
        TaskExample(task=meta.task, lang="en", doc=r["doc"], inputs=inputs_of(r), output=output_of(name, r), dataset=name)
        for r in records(name)
    ]


# --------------------------------------------------------------------------- splits and corpus


def doc_is_heldout(doc: str, fraction: float = HELDOUT_FRACTION, seed: int = SEED) -> bool:
    """Whether document ``doc`` is held out: a seeded hash of its id, so the answer never depends on
    which other documents exist or on their order."""
    h = int(hashlib.sha256(f"{seed}:{doc}".encode()).hexdigest()[:12], 16) / float(16**12)
    return h < fraction


def split_by_doc(
    items: Iterable[T], fraction: float = HELDOUT_FRACTION, seed: int = SEED, doc: Callable[[T], str] | None = None
) -> tuple[list[T], list[T]]:
    """(train, held-out) by document. ``doc`` gives an item's id (default: ``item["doc"]`` or ``item.doc``)."""
    key = doc or (lambda x: x["doc"] if isinstance(x, dict) else x.doc)  # type: ignore[attr-defined, index]
    train: list[T] = []
    held: list[T] = []
    for x in items:
        (held if doc_is_heldout(key(x), fraction, seed) else train).append(x)
    return train, held


def corpus_paths() -> dict[str, list[Path]]:
    """Corpus part ('domain', 'general_replay', 'general_heldout') -> its compressed files."""
    out: dict[str, list[Path]] = {p: [] for p in CORPUS_PARTS}
    for meta in manifest().values():
        if meta.kind == "corpus" and meta.part is not None:
            out[meta.part].append(embedded_dir() / meta.file)
    return out


def corpus_documents(
    part: CorpusPart, split: Literal["train", "heldout"] | None = None, fraction: float = HELDOUT_FRACTION, seed: int = SEED
) -> list[dict[str, Any]]:
    """The documents ``{"doc", "source", "text"}`` of one corpus part, optionally one side of the doc split.

    The domain part shares its doc ids with the task datasets (a FIN NER agreement, a company's
    10-Ks, a TAT-QA report), so ``split="train"`` never contains text a held-out task example comes from.
    """
    if part not in CORPUS_PARTS:
        raise DataError(f"Unknown corpus part {part!r}; use one of {', '.join(CORPUS_PARTS)}.")
    docs = [r for n in available("corpus") if info(n).part == part for r in records(n)]
    if split is None:
        return docs
    train, held = split_by_doc(docs, fraction, seed)
    return held if split == "heldout" else train


def write_corpus(
    part: CorpusPart, out: Path, split: Literal["train", "heldout"] | None = None, fraction: float = HELDOUT_FRACTION, seed: int = SEED
) -> Path:
    """Write one corpus part as plain JSON Lines (column ``text``) for ``corpus.sources``; returns the file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    docs = corpus_documents(part, split, fraction, seed)
    out.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return out


if __name__ == "__main__":
    from domain_lm.data.embedded_build import main

    raise SystemExit(main())
