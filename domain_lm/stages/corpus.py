"""Stage ``corpus``: build the packed pretraining corpus with the base model's tokenizer.

Source lists left empty fall back to the embedded corpus (``data.corpus_sources``), written into
the stage's work dir, so ``domain-lm pipeline run`` works out of the box on real text. The stage
also writes ``sources.json``: where the domain, replay and measured general text come from.
"""

from __future__ import annotations

from domain_lm.config import PipelineConfig
from domain_lm.pipeline.stage import Stage, StageContext


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    from domain_lm.core.hashing import sha256_json
    from domain_lm.data.corpus import inputs_hash
    from domain_lm.data.corpus_sources import embedded_hashes

    sec = config.corpus
    return {
        "domain": sha256_json(inputs_hash(sec.sources)),
        "general": sha256_json(inputs_hash(sec.general_sources)),
        "general_heldout": sha256_json(inputs_hash(sec.general_heldout_sources)),
        "embedded": sha256_json(embedded_hashes(sec)),
    }


def run(ctx: StageContext) -> None:
    from domain_lm.core import atomic
    from domain_lm.core.hashing import sha256_json
    from domain_lm.data.corpus import build_corpus_cached, inputs_hash
    from domain_lm.data.corpus_sources import text_sources, with_default_sources
    from domain_lm.models.loading import load_tokenizer

    _, base_path = ctx.inputs.model()
    section = with_default_sources(ctx.config.corpus, ctx.work_dir / "embedded")
    report, cached = build_corpus_cached(section, load_tokenizer(base_path), ctx.out)
    atomic.write_json(ctx.out / "sources.json", text_sources(ctx.config.corpus))
    res = ctx.result
    for name, rel in [("docs", "docs"), ("blocks", "blocks"), ("report", "report.json"), ("report_md", "report.md"),
                      ("length_hist", "length_hist.png"), ("sources", "sources.json")]:
        ctx.add_artefact(name, rel)
    res.artefacts["corpus"] = "."
    for key, sources in (("domain", section.sources), ("general", section.general_sources),
                         ("general_heldout", section.general_heldout_sources)):
        if sources:
            res.inputs[key] = sha256_json(inputs_hash(sources))
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
            "general_blocks_heldout": report.get("general_heldout", report.get("general", {})).get("blocks_heldout", 0),
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
