"""Pipeline stage ``corpus``: build the packed pretraining corpus with the base model's tokenizer.

With no ``corpus.sources`` the project's demo corpus is written (by code) into the stage's work
dir and used, so ``domain-lm pipeline run`` works out of the box.
"""

from __future__ import annotations

from pathlib import Path

from domain_lm.config import CorpusSection, CorpusSource, PipelineConfig
from domain_lm.runstore import StageResult

SECTIONS = ["corpus", "base_model"]
NEEDS = ["base"]


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.data.corpus import inputs_hash
    from domain_lm.hashing import sha256_json

    sec = config.corpus
    return {"domain": sha256_json(inputs_hash(sec.sources)), "general": sha256_json(inputs_hash(sec.general_sources))}


def resolve_section(section: CorpusSection, scratch: Path) -> CorpusSection:
    """The section with the demo corpus filled in when no sources are configured."""
    if section.sources:
        return section
    from domain_lm.data.demo_corpus import write_demo_corpus

    demo = write_demo_corpus(scratch / "demo_corpus", seed=section.seed)
    return section.model_copy(update={"sources": [CorpusSource(path=str(demo))]})


def run(ctx) -> StageResult:
    from domain_lm.data.corpus import build_corpus_cached, inputs_hash
    from domain_lm.hashing import sha256_json
    from domain_lm.models.loading import load_tokenizer

    _, base_path = ctx.input_model("base")
    section = resolve_section(ctx.config.corpus, ctx.work_dir)
    tokenizer = load_tokenizer(base_path)
    report, cached = build_corpus_cached(section, tokenizer, ctx.out)
    res = ctx.writer.result
    for name, rel in [("docs", "docs"), ("blocks", "blocks"), ("report", "report.json"), ("report_md", "report.md"), ("length_hist", "length_hist.png")]:
        ctx.writer.add_artefact(name, rel)
    res.artefacts["corpus"] = "."
    res.inputs["domain"] = sha256_json(inputs_hash(section.sources))
    if section.general_sources:
        res.inputs["general"] = sha256_json(inputs_hash(section.general_sources))
    dom = report["domain"]
    res.metrics.update(
        {
            "cached": cached,
            "docs_in": dom["docs_in"],
            "docs_out": dom["docs_out"],
            "duplicates_exact": dom["duplicates_exact"],
            "duplicates_near": dom["duplicates_near"],
            "pii_hits": sum(dom["pii_hits"].values()),
            "blocks_train": dom["blocks_train"],
            "blocks_heldout": dom["blocks_heldout"],
            "tokens_train": dom["tokens_train"],
            "heldout_docs": dom["heldout_docs"],
            "general_blocks_train": report.get("general", {}).get("blocks_train", 0),
        }
    )
    for lang, n in dom["tokens_by_lang"].items():
        res.metrics[f"tokens_{lang}"] = n
    return res
