"""Stage ``corpus``: build the packed pretraining corpus with the base model's tokenizer.

With no ``corpus.sources`` the project's demo corpus is written (by code) into the stage's work
dir and used, so ``domain-lm pipeline run`` works out of the box.
"""

from __future__ import annotations

from domain_lm.config import PipelineConfig
from domain_lm.pipeline.stage import Stage, StageContext


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.core.hashing import sha256_json
    from domain_lm.data.corpus import inputs_hash

    sec = config.corpus
    return {"domain": sha256_json(inputs_hash(sec.sources)), "general": sha256_json(inputs_hash(sec.general_sources))}


def run(ctx: StageContext) -> None:
    from domain_lm.core.hashing import sha256_json
    from domain_lm.data.corpus import build_corpus_cached, inputs_hash
    from domain_lm.data.demo_corpus import with_demo_sources
    from domain_lm.models.loading import load_tokenizer

    _, base_path = ctx.inputs.model()
    section = with_demo_sources(ctx.config.corpus, ctx.work_dir)
    report, cached = build_corpus_cached(section, load_tokenizer(base_path), ctx.out)
    res = ctx.result
    for name, rel in [("docs", "docs"), ("blocks", "blocks"), ("report", "report.json"), ("report_md", "report.md"),
                      ("length_hist", "length_hist.png")]:
        ctx.add_artefact(name, rel)
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


STAGE = Stage(
    name="corpus",
    title="Domain corpus",
    sections=("corpus", "base_model"),
    outputs=("corpus", "docs", "blocks", "report"),
    run=run,
    data_hashes=data_hashes,
)
