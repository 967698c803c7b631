"""The example pipeline configs in configs/: they validate, and their data loads through the
project's own loaders with the mappings they declare (data checks skip without ../shared/data).

The configs name the shared data as ``../shared/data/...`` (relative to the repository root, the
directory the pipeline is run from). Here those paths are re-rooted onto the ``shared_data``
fixture, so the checks follow ``DOMAIN_LM_SHARED_DATA`` and do not depend on the test's cwd.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from domain_lm.config import PipelineConfig, build_config, load_config
from domain_lm.data import sft_data
from domain_lm.data.corpus_clean import detect_lang
from domain_lm.data.extract import iter_documents, source_files
from domain_lm.data.preference import build_preference_data, load_preferences
from domain_lm.data.records import load_records
from domain_lm.tasks import TemplateRegistry

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PREFIX = "../shared/data"
NAMES = ["bank-en.yaml", "bank-zh.yaml"]

# Independent statement of what each dataset's template inputs and gold output must be, computed
# from the raw row. A wrong `fields` / `label_field` / `label_map` in a config makes the loaded
# records disagree with these.
TWITTER = {"bearish": "negative", "bullish": "positive", "neutral": "neutral"}
# CLUENER types the entities task covers (the others are dropped), written here independently.
CLUENER = {"company": "ORG", "organization": "ORG", "government": "ORG", "name": "PER", "address": "LOC", "scene": "LOC"}

EXPECTED: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[dict[str, Any]], Any]]] = {
    "fpb/train.jsonl": (lambda row: {"text": row["text"]}, lambda row: row["label"]),
    "twitter_fin_sentiment/train.jsonl": (lambda row: {"text": row["text"]}, lambda row: TWITTER[row["label"]]),
    # FinFE: the config maps the int `label`; check it against the file's own `label_name` column.
    "bbt_fincuge/finfe/train.jsonl": (lambda row: {"text": row["text"]}, lambda row: row["label_name"]),
    "bbt_fincuge/finna/train.jsonl": (lambda row: {"text": row["text"]}, lambda row: row["summary"].strip()),
    "finer_ord/train.jsonl": (
        lambda row: {"text": row["text"]},
        lambda row: [{"text": e["text"], "type": e["type"]} for e in row["entities"]],
    ),
    "fin_ner/train.jsonl": (
        lambda row: {"text": row["text"]},
        lambda row: [{"text": e["text"], "type": e["type"]} for e in row["entities"] if e["type"] != "MISC"],
    ),
    "cluener/train.jsonl": (
        lambda row: {"text": row["text"]},
        lambda row: [{"text": e["text"], "type": CLUENER[e["type"]]} for e in row["entities"] if e["type"] in CLUENER],
    ),
}


def _rel(path: str) -> str:
    assert path.startswith(PREFIX + "/"), f"{path!r}: example configs reference the shared data as {PREFIX}/..."
    return path[len(PREFIX) + 1 :]


def _reroot(value: Any, root: Path) -> Any:
    if isinstance(value, str) and value.startswith(PREFIX + "/"):
        return str(root / _rel(value))
    if isinstance(value, dict):
        return {k: _reroot(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_reroot(v, root) for v in value]
    return value


def _config_on(name: str, root: Path) -> PipelineConfig:
    """The config with its ``../shared/data`` paths pointing at ``root``."""
    data = _reroot(yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8")), root)
    return build_config(data, source=name)


def _rel_to(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _data_paths(cfg: PipelineConfig) -> list[str]:
    return (
        [s.path for s in cfg.corpus.sources + cfg.corpus.general_sources]
        + [d.path for d in cfg.tasks.datasets if d.path]
        + list(cfg.reward.preference_sources)
    )


def _rows(path: Path, limit: int | None) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if limit is not None and len(out) >= limit:
                break
    return out


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry.load(load_config(CONFIGS / NAMES[0]).tasks.templates_dir)


# --------------------------------------------------------------------------- no data needed


@pytest.mark.parametrize("name", NAMES)
def test_config_validates_and_maps_onto_the_templates(name, registry):
    cfg = load_config(CONFIGS / name)
    assert cfg.profile == "quick"
    assert cfg.base_model.name == {"bank-en.yaml": "smollm2-135m", "bank-zh.yaml": "gemma3-270m"}[name]
    assert cfg.tasks.datasets and cfg.corpus.sources
    for p in _data_paths(cfg):
        _rel(p)  # every data path is ../shared/data/... (run from the repo root; never inside the repo)
    # Caps that keep the quick profile quick.
    assert all(s.max_docs is not None for s in cfg.corpus.sources)
    assert all(d.max_examples is not None for d in cfg.tasks.datasets)
    if cfg.reward.preference_sources:
        assert cfg.reward.max_pairs_per_source is not None
    for ds in cfg.tasks.datasets:
        t = registry.get(ds.task)
        assert ds.lang in t.languages
        assert set(ds.fields) <= set(t.inputs), f"{ds.path}: unknown template fields {ds.fields}"
        assert all(t.inputs[f].required is False or f in ds.fields for f in t.inputs)
        if t.output.kind == "label":
            assert set(ds.label_map.values()) <= set(t.output.labels), f"{ds.path}: label_map targets {ds.label_map}"
    assert all(d.lang == ("zh" if name == "bank-zh.yaml" else "en") for d in cfg.tasks.datasets)
    assert all(s.lang == ("zh" if name == "bank-zh.yaml" else "en") for s in cfg.corpus.sources)


def test_readme_documents_both_configs():
    text = (CONFIGS / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"configs/{name}" in text
    assert "domain-lm pipeline run configs/bank-en.yaml" in text


# --------------------------------------------------------------------------- against ../shared/data


@pytest.mark.parametrize("name", NAMES)
def test_every_referenced_file_exists(name, shared_data):
    cfg = load_config(CONFIGS / name)
    for p in _data_paths(cfg):
        assert (shared_data / _rel(p)).exists(), f"{name}: {p} not found under {shared_data}"
    # Under the default layout the relative paths resolve from the repository root as written.
    if shared_data.resolve() == (REPO.parent / "shared" / "data").resolve():
        for p in _data_paths(cfg):
            assert (REPO / p).exists(), p


@pytest.mark.parametrize("name", NAMES)
def test_task_records_load_with_the_declared_mapping(name, shared_data, registry):
    cfg = _config_on(name, shared_data)
    records = load_records(cfg, registry)
    start = 0
    for ds in cfg.tasks.datasets:
        t = registry.get(ds.task)
        rows = _rows(Path(ds.path), ds.max_examples)
        recs = records[start : start + len(rows)]
        start += len(rows)
        # No row was skipped (a bad `fields` mapping or over-long inputs would drop rows) ...
        assert len(recs) == len(rows) == ds.max_examples, f"{ds.path}: {len(recs)} records from {len(rows)} rows"
        expected_inputs, expected_output = EXPECTED[_rel_to(ds.path, shared_data)]
        outputs = []
        for rec, row in zip(recs, rows):
            assert rec.task == ds.task and rec.lang == ds.lang
            # ... the template inputs and the gold output are what the raw row says ...
            assert rec.inputs == expected_inputs(row), f"{ds.path}: {row} -> inputs {rec.inputs!r}"
            got = rec.output.strip() if isinstance(rec.output, str) and t.output.kind == "text" else rec.output
            assert got == expected_output(row), f"{ds.path}: {row} -> {rec.output!r}"
            # ... and renders into an SFT example (the output contract accepts the target).
            ex = sft_data.render_example(t, rec)
            assert ex["messages"][-1]["content"] == t.target_text(rec.output, lang=ds.lang)
            outputs.append(rec.output)
        if t.output.kind == "label":
            assert set(outputs) <= set(t.output.labels)
            assert set(outputs) == set(t.output.labels), f"{ds.path}: the capped sample misses a class: {set(outputs)}"
            assert set(t.parse_output(t.target_text(o, ds.lang), ds.lang) for o in outputs) == set(outputs)
    assert start == len(records)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_sources_load(name, shared_data):
    cfg = _config_on(name, shared_data)
    for src in cfg.corpus.sources:
        docs = list(iter_documents([src]))
        assert len(docs) == src.max_docs, f"{src.path}: {len(docs)} documents, config caps at {src.max_docs}"
        assert not any("LICENSE" in Path(d.source.split("#")[0]).name for d in docs), f"{src.path}: a licence file is read as text"
        assert all(d.lang == src.lang for d in docs)
        sample = [d.text for d in docs[:: max(1, len(docs) // 20)]]
        assert all(detect_lang(text) == src.lang for text in sample), f"{src.path}: text is not {src.lang}"
        if src.split == "blank_line":
            assert len(source_files(src)) == 1 and len(docs) > 1
    # The whole capped corpus section goes through the corpus stage's reader too.
    assert len(list(iter_documents(cfg.corpus.sources))) == sum(s.max_docs for s in cfg.corpus.sources)


@pytest.mark.parametrize("name", NAMES)
def test_preference_pairs_load(name, shared_data, registry):
    cfg = _config_on(name, shared_data)
    for src in cfg.reward.preference_sources:
        pairs = load_preferences(src, limit=cfg.reward.max_pairs_per_source)
        assert len(pairs) == cfg.reward.max_pairs_per_source
        for p in pairs:
            assert p.kind == "hh" and p.prompt[-1]["role"] == "user" and p.chosen != p.rejected
    # The reward stage's own builder: file pairs plus bank-task pairs (few task records: seconds).
    few = [d.model_copy(update={"max_examples": 40}) for d in cfg.tasks.datasets]
    small = cfg.model_copy(update={"tasks": cfg.tasks.model_copy(update={"datasets": few})})
    train, held, counts = build_preference_data(small, registry=registry)
    assert counts.get("hh", 0) == len(cfg.reward.preference_sources) * (cfg.reward.max_pairs_per_source or 0)
    tasks = {d.task for d in cfg.tasks.datasets}
    task_pairs = [p for p in train + held if p.task is not None]
    assert {p.task for p in task_pairs} == tasks
    for p in task_pairs:
        t = registry.get(p.task)
        assert p.lang in t.languages and p.chosen != p.rejected
        t.parse_output(p.chosen, lang=p.lang)  # the gold answer honours the output contract
    if "sentiment" in tasks:
        assert counts.get("wrong_label", 0) > 0
    if "report_summary" in tasks:
        assert counts.get("unfaithful_numbers", 0) > 0
