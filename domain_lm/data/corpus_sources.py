"""The corpus stage's text when the config names none: the embedded, redistributable corpus.

- domain (``corpus.sources`` empty): 10-K text from TAT-QA and KPI-EDGAR and SEC loan agreements
  from FIN NER, with the document ids the embedded task data carries (``doc_column="doc"``), so the
  corpus holds out exactly the documents the task data holds out;
- general, measured only (``corpus.general_heldout_sources`` empty): held-out HH dialogues;
- general, replayed (``corpus.general_sources`` empty and ``general_replay="embedded"``): other HH
  dialogues (no dialogue or opening question in common with the measured ones). With
  ``general_replay="samples"`` the pretrain stage samples replay text from the base model instead.

The parts are written as JSON Lines into a scratch directory (the stage's work dir), so the corpus
build reads them like any other source and its cache key follows their content.
"""

from __future__ import annotations

from pathlib import Path

from domain_lm.config import CorpusSection, CorpusSource

#: corpus part -> what the report says about it
EMBEDDED_LABELS = {
    "domain": "the embedded domain corpus (TAT-QA and KPI-EDGAR 10-K text, FIN NER SEC loan agreements)",
    "general_replay": "the embedded HH replay dialogues (hh_rlhf/general_replay)",
    "general_heldout": "the embedded held-out HH dialogues (hh_rlhf/general_heldout), never replayed",
}
SAMPLES_LABEL = "text sampled from the base model (pretrain.replay_samples)"


def _embedded(part: str, scratch: Path) -> list[CorpusSource]:
    from domain_lm.data.embedded import write_corpus

    path = write_corpus(part, scratch / f"{part}.jsonl")  # type: ignore[arg-type]
    return [CorpusSource(path=str(path), format="jsonl", text_column="text", lang="en", doc_column="doc")]


def embedded_parts(section: CorpusSection) -> list[str]:
    """The embedded corpus parts ``section`` falls back to."""
    parts = []
    if not section.sources:
        parts.append("domain")
    if not section.general_sources and section.general_replay == "embedded":
        parts.append("general_replay")
    if not section.general_heldout_sources:
        parts.append("general_heldout")
    return parts


def with_default_sources(section: CorpusSection, scratch: Path) -> CorpusSection:
    """``section`` with every empty source list that has an embedded default filled in (the files
    are written under ``scratch``)."""
    fields = {"domain": "sources", "general_replay": "general_sources", "general_heldout": "general_heldout_sources"}
    update = {fields[part]: _embedded(part, scratch) for part in embedded_parts(section)}
    return section.model_copy(update=update) if update else section


def text_sources(section: CorpusSection) -> dict[str, str]:
    """Where each kind of text comes from, in words: ``domain``, ``general_replay``, ``general_heldout``."""

    def configured(key: str, sources: list[CorpusSource]) -> str:
        return f"corpus.{key}: " + ", ".join(s.path for s in sources)

    embedded = embedded_parts(section)
    out = {}
    for part, key, sources in (
        ("domain", "sources", section.sources),
        ("general_replay", "general_sources", section.general_sources),
        ("general_heldout", "general_heldout_sources", section.general_heldout_sources),
    ):
        out[part] = EMBEDDED_LABELS[part] if part in embedded else configured(key, sources) if sources else SAMPLES_LABEL
    return out


def embedded_hashes(section: CorpusSection) -> dict[str, str]:
    """Content hash of each embedded dataset ``section`` falls back to (for the stage fingerprint)."""
    from domain_lm.data.embedded import available, info

    parts = set(embedded_parts(section))
    return {name: info(name).content_sha256 for name in available("corpus") if info(name).part in parts}
