"""Build the pretraining corpus: extract -> clean -> scrub PII -> dedupe -> split -> chunk -> pack.

Two streaming passes, so memory stays bounded by one shard of ``shard_docs`` documents:

1. raw documents are cleaned, filtered, scrubbed and de-duplicated, then written to
   ``docs/<part>-NNNNN.jsonl`` shards (only ids and digests stay in memory);
2. the held-out documents are chosen by a seeded hash of their ids (so the split is by
   *document*, deterministic, and independent of file order; a document id from a source's
   ``doc_column`` is hashed exactly as the task data's document ids are, ``embedded.doc_is_heldout``,
   so a held-out task document is held out here too), then each shard is chunked with
   ``langchain-text-splitters`` (token-aware, paragraph and Chinese-sentence separators) and packed
   into fixed-length blocks with EOS between documents, written to ``blocks/<part>-<split>-NNNNN.parquet``.

A build is cached under ``$DOMAIN_LM_HOME/cache/corpus/<hash>`` where the hash covers the
content of every input file, the corpus config and the tokenizer; ``build_corpus_cached`` reuses it.

Layout of a corpus directory::

    docs/domain-00000.jsonl        {"id", "source", "lang", "split", "tokens", "text"[, "doc"]}
    blocks/domain-train-00000.parquet   column input_ids (list of token ids, <= block_size)
    blocks/domain-heldout-00000.parquet
    blocks/general-train-*.parquet     replay text (general_sources), every document trains
    blocks/general-heldout-*.parquet   general text for perplexity only (general_heldout_sources)
    report.json  report.md  length_hist.png

The general parts are disjoint by construction: the held-out general text is built first and a
replay document that duplicates one of its documents (exactly or nearly) is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from domain_lm.config import CorpusSection, CorpusSource
from domain_lm.core import atomic
from domain_lm.core.figures import pyplot, save_figure
from domain_lm.core.hashing import sha256_file, sha256_json
from domain_lm.data.corpus_clean import clean_document, detect_lang, effective_length
from domain_lm.data.dedupe import Deduper, exact_key
from domain_lm.data.extract import RawDoc, check_sources, iter_documents

CORPUS_VERSION = 2  # bump when the processing changes, so old cache entries are not reused
MIN_BLOCK_TOKENS = 16
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", "，", "、", ". ", "! ", "? ", "; ", " ", ""]


# --------------------------------------------------------------------------- pass 1: documents


@dataclass
class PartStats:
    """Counts for one part (domain or general) of the corpus."""

    docs_in: int = 0
    docs_out: int = 0
    too_short: int = 0
    duplicates_exact: int = 0
    duplicates_near: int = 0
    boilerplate_dropped: int = 0
    pii_hits: Counter = field(default_factory=Counter)
    docs_by_lang: Counter = field(default_factory=Counter)
    tokens_by_lang: Counter = field(default_factory=Counter)
    chunks: int = 0
    train_docs: int = 0
    heldout_docs: int = 0
    blocks: Counter = field(default_factory=Counter)  # split -> blocks
    block_tokens: Counter = field(default_factory=Counter)  # split -> tokens
    doc_tokens: list[int] = field(default_factory=list)  # for the histogram (one int per doc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "too_short": self.too_short,
            "duplicates_exact": self.duplicates_exact,
            "duplicates_near": self.duplicates_near,
            "boilerplate_dropped": self.boilerplate_dropped,
            "pii_hits": dict(sorted(self.pii_hits.items())),
            "docs_by_lang": dict(sorted(self.docs_by_lang.items())),
            "tokens_by_lang": dict(sorted(self.tokens_by_lang.items())),
            "chunks": self.chunks,
            "train_docs": self.train_docs,
            "heldout_docs": self.heldout_docs,
            "blocks_train": self.blocks["train"],
            "blocks_heldout": self.blocks["heldout"],
            "tokens_train": self.block_tokens["train"],
            "tokens_heldout": self.block_tokens["heldout"],
        }


def make_deduper(section: CorpusSection) -> Deduper:
    return Deduper(threshold=section.near_dup_threshold, num_perm=section.num_perm, seed=section.seed)


def clean_stream(
    raw: Iterable[RawDoc], section: CorpusSection, stats: PartStats, dedupe: Deduper | None = None
) -> Iterator[dict[str, Any]]:
    """Clean, length-filter, scrub and de-duplicate raw documents (a generator). ``dedupe`` may
    already hold documents (of another part) whose duplicates are to be dropped too."""
    from domain_lm.pii import scrub

    dedupe = dedupe or make_deduper(section)
    for doc in raw:
        if section.max_docs is not None and stats.docs_in >= section.max_docs:
            break
        stats.docs_in += 1
        text, dropped = clean_document(doc.text, section.boilerplate_patterns)
        stats.boilerplate_dropped += dropped
        if effective_length(text) < section.min_chars:
            stats.too_short += 1
            continue
        hits: dict[str, int] = {}
        if section.pii_scrub:
            # Scrub before dedupe so copies that differ only in PII count as duplicates.
            text, hits = scrub(text)
        doc_id = exact_key(text)[:20]
        verdict = dedupe.check(doc_id, text)
        if verdict is not None:
            setattr(stats, f"duplicates_{verdict}", getattr(stats, f"duplicates_{verdict}") + 1)
            continue
        stats.pii_hits.update(hits)  # counted for kept documents only
        lang = doc.lang if doc.lang != "auto" else detect_lang(text)
        stats.docs_out += 1
        stats.docs_by_lang[lang] += 1
        out = {"id": doc_id, "source": doc.source, "lang": lang, "text": text}
        yield out if doc.doc is None else {**out, "doc": doc.doc}


def write_doc_shards(
    docs: Iterable[dict[str, Any]], out: Path, part: str, shard_docs: int
) -> tuple[list[Path], dict[str, str | None]]:
    """Write documents to JSONL shards of ``shard_docs``; returns the shard paths and, per doc id in
    order, its source document id (``doc``, None when the source has no ``doc_column``)."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    ids: dict[str, str | None] = {}
    fh = None
    for doc in docs:
        if len(ids) % shard_docs == 0:
            if fh:
                fh.close()
            shards.append(out / f"{part}-{len(shards):05d}.jsonl")
            fh = shards[-1].open("w", encoding="utf-8")
        fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        ids[doc["id"]] = doc.get("doc")
    if fh:
        fh.close()
    return shards, ids


def heldout_ids(ids: list[str], fraction: float, seed: int) -> set[str]:
    """The documents held out: the ``round(fraction * n)`` ids with the smallest seeded hash.

    At least one document is held out when ``fraction > 0`` and there are two or more, and never all."""
    if fraction <= 0 or len(ids) < 2:
        return set()
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n])


def heldout_split(ids: dict[str, str | None], fraction: float, seed: int) -> set[str]:
    """The held-out doc ids of one part.

    A document with a source document id is held out iff ``doc_is_heldout(doc, fraction, seed)``:
    the rule the task data is split by, so both sides agree on every shared document. The others
    are split among themselves by ``heldout_ids``."""
    from domain_lm.data.embedded import doc_is_heldout

    if fraction <= 0:
        return set()
    held = {i for i, doc in ids.items() if doc is not None and doc_is_heldout(doc, fraction, seed)}
    return held | heldout_ids([i for i, doc in ids.items() if doc is None], fraction, seed)


# --------------------------------------------------------------------------- pass 2: chunk and pack


def make_splitter(tokenizer, chunk_tokens: int):
    """Token-aware recursive splitter: paragraphs first, then lines, then (Chinese) sentences."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=chunk_tokens, chunk_overlap=0, separators=SEPARATORS, keep_separator="end"
    )


class Packer:
    """Concatenate token streams (EOS after each document) and cut fixed-length blocks."""

    def __init__(self, block_size: int, eos_id: int):
        self.block_size = block_size
        self.eos_id = eos_id
        self._buf: list[int] = []

    def add_document(self, ids: list[int]) -> list[list[int]]:
        self._buf.extend(ids)
        self._buf.append(self.eos_id)
        out = []
        while len(self._buf) >= self.block_size:
            out.append(self._buf[: self.block_size])
            self._buf = self._buf[self.block_size :]
        return out

    def flush(self) -> list[list[int]]:
        """The final partial block (kept when it is long enough to be worth a step)."""
        rest, self._buf = self._buf, []
        return [rest] if len(rest) >= MIN_BLOCK_TOKENS else []


def _write_blocks(blocks: list[list[int]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"input_ids": pa.array(blocks, type=pa.list_(pa.int32()))})
    pq.write_table(table, path)


def pack_shards(
    shards: list[Path],
    held: set[str] | None,
    tokenizer,
    section: CorpusSection,
    out: Path,
    part: str,
    stats: PartStats,
    only: str | None = None,
) -> None:
    """Chunk + tokenize + pack every doc shard; rewrites the doc shards with split and token counts.
    A document is held out when its id is in ``held``; ``only`` puts every document on that side."""
    splitter = make_splitter(tokenizer, section.chunk_tokens)
    packers = {s: Packer(section.block_size, tokenizer.eos_token_id) for s in ("train", "heldout")}
    n_written = Counter()

    def emit(split: str, blocks: list[list[int]]) -> None:
        if not blocks:
            return
        _write_blocks(blocks, out / "blocks" / f"{part}-{split}-{n_written[split]:05d}.parquet")
        n_written[split] += 1
        stats.blocks[split] += len(blocks)
        stats.block_tokens[split] += sum(len(b) for b in blocks)

    for shard in shards:
        pending: dict[str, list[list[int]]] = {"train": [], "heldout": []}
        docs = [json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines()]
        for doc in docs:
            split = only or ("heldout" if doc["id"] in (held or ()) else "train")
            chunks = splitter.split_text(doc["text"])
            stats.chunks += len(chunks)
            ids: list[int] = []
            for chunk in chunks:
                ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
            doc["split"], doc["tokens"] = split, len(ids)
            stats.tokens_by_lang[doc["lang"]] += len(ids)
            stats.doc_tokens.append(len(ids))
            stats.train_docs += split == "train"
            stats.heldout_docs += split == "heldout"
            pending[split].extend(packers[split].add_document(ids))
        for split, blocks in pending.items():
            emit(split, blocks)
        atomic.write_text(shard, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    for split, packer in packers.items():
        emit(split, packer.flush())


def build_part(
    sources: list[CorpusSource],
    tokenizer,
    section: CorpusSection,
    out: Path,
    part: str,
    only: Literal["train", "heldout"] | None = None,
    dedupe: Deduper | None = None,
    files: str | None = None,
) -> PartStats:
    """Build one part of the corpus: documents into ``docs/<files>-*.jsonl``, blocks into
    ``blocks/<part>-<split>-*.parquet``; ``only`` puts every document on one side of the split."""
    stats = PartStats()
    docs = clean_stream(iter_documents(sources), section, stats, dedupe)
    shards, ids = write_doc_shards(docs, out / "docs", files or part, section.shard_docs)
    held = None if only else heldout_split(ids, section.heldout_fraction, section.seed)
    pack_shards(shards, held, tokenizer, section, out, part, stats, only)
    return stats


# --------------------------------------------------------------------------- report


def _plot_lengths(parts: dict[str, PartStats], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, st in parts.items():
        if st.doc_tokens:
            ax.hist(st.doc_tokens, bins=30, alpha=0.6, label=f"{name} ({len(st.doc_tokens)} docs)")
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("documents")
    ax.set_title("Document length")
    ax.legend()
    save_figure(fig, path)


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Corpus report", "", f"Block size {report['block_size']} tokens, chunk size {report['chunk_tokens']} tokens.", ""]
    titles = {"domain": "Domain text", "general": "General text (replay)", "general_heldout": "General text (held out, measured only)"}
    for part, title in titles.items():
        r = report.get(part)
        if not r:
            continue
        lines += [f"## {title}", "", "| item | value |", "|---|---|"]
        for k, v in r.items():
            lines.append(f"| {k} | {json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v} |")
        lines.append("")
    lines += ["![document length](length_hist.png)", ""]
    return "\n".join(lines)


def build_corpus(
    sources: list[CorpusSource],
    tokenizer,
    section: CorpusSection,
    out: str | Path,
    general_sources: list[CorpusSource] | None = None,
    general_heldout_sources: list[CorpusSource] | None = None,
) -> dict[str, Any]:
    """Build the corpus into ``out`` (which must be empty or absent); returns the report dict.

    ``general_sources`` become replay blocks (``general-train``), ``general_heldout_sources`` the
    blocks general perplexity is measured on (``general-heldout``); with no held-out general text,
    the general sources are split like the domain ones. Every source is checked first, so a bad
    path raises DataError before anything is written."""
    check_sources(list(sources) + list(general_sources or []) + list(general_heldout_sources or []))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"domain": build_part(sources, tokenizer, section, out, "domain")}
    if general_heldout_sources:
        seen = make_deduper(section)  # remembers the measured text, so replay never repeats it
        parts["general_heldout"] = build_part(
            general_heldout_sources, tokenizer, section, out, "general", only="heldout", dedupe=seen, files="general_heldout"
        )
        if general_sources:
            parts["general"] = build_part(general_sources, tokenizer, section, out, "general", only="train", dedupe=seen)
    elif general_sources:
        parts["general"] = build_part(general_sources, tokenizer, section, out, "general")
    report: dict[str, Any] = {"block_size": section.block_size, "chunk_tokens": section.chunk_tokens}
    report.update({name: st.to_dict() for name, st in parts.items()})
    _plot_lengths(parts, out / "length_hist.png")
    atomic.write_json(out / "report.json", report)
    atomic.write_text(out / "report.md", _markdown(report))
    return report


# --------------------------------------------------------------------------- cache


def tokenizer_hash(tokenizer) -> str:
    """Hash of the vocabulary and special tokens (what changes the token ids we write)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return sha256_json({"vocab": vocab, "eos": tokenizer.eos_token_id, "cls": type(tokenizer).__name__})


def inputs_hash(sources: list[CorpusSource]) -> dict[str, str]:
    """Content hash of every input file, keyed by path (what decides whether a cache entry is valid)."""
    return {str(f): sha256_file(f) for _, f in check_sources(sources)}


def _content_key(sources: list[CorpusSource]) -> list[dict[str, Any]]:
    """Per source: its options and (path relative to the source, content hash) of each file, so the
    same files in another directory (e.g. the demo corpus written into each run) hit the cache."""
    out = []
    for src in sources:
        root = Path(src.path).expanduser()
        files = [(str(f.relative_to(root)) if f != root else f.name, sha256_file(f)) for _, f in check_sources([src])]
        out.append({"options": src.model_dump(mode="json", exclude={"path"}), "files": files})
    return out


def cache_key(section: CorpusSection, tokenizer) -> str:
    return sha256_json(
        {
            "version": CORPUS_VERSION,
            "section": section.model_dump(mode="json", exclude={"cache", "sources", "general_sources", "general_heldout_sources"}),
            "domain": _content_key(section.sources),
            "general": _content_key(section.general_sources),
            "general_heldout": _content_key(section.general_heldout_sources),
            "tokenizer": tokenizer_hash(tokenizer),
        }
    )


def cache_root() -> Path:
    from domain_lm.models.registry import home

    return home() / "cache" / "corpus"


def _copy_tree(src: Path, dest: Path) -> None:
    """Hard-link when possible (same filesystem, instant), else copy."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link_or_copy, dirs_exist_ok=True)


def build_corpus_cached(
    section: CorpusSection, tokenizer, out: str | Path, cache_dir: str | Path | None = None
) -> tuple[dict[str, Any], bool]:
    """``build_corpus`` through the content-hash cache (default ``cache_root()``). Returns (report, cached)."""
    out = Path(out)
    if not section.sources:
        raise ValueError("build_corpus_cached needs corpus.sources (the stage fills in the embedded corpus when empty)")
    key = cache_key(section, tokenizer)
    entry = Path(cache_dir or cache_root()) / key
    if section.cache and (entry / "report.json").is_file():
        _copy_tree(entry, out)
        report = json.loads((entry / "report.json").read_text(encoding="utf-8"))
        return report, True
    parts = (section.sources, section.general_sources, section.general_heldout_sources)
    if not section.cache:
        return build_corpus(parts[0], tokenizer, section, out, *parts[1:]), False
    with atomic.atomic_dir(entry) as staging:
        report = build_corpus(parts[0], tokenizer, section, staging, *parts[1:])
    _copy_tree(entry, out)
    return report, False


# --------------------------------------------------------------------------- reading blocks back


def read_blocks(corpus_dir: str | Path, part: str, split: str, limit: int | None = None) -> list[list[int]]:
    """The packed blocks of ``part`` ('domain'/'general') and ``split`` ('train'/'heldout')."""
    import pyarrow.parquet as pq

    out: list[list[int]] = []
    for f in sorted((Path(corpus_dir) / "blocks").glob(f"{part}-{split}-*.parquet")):
        out.extend(pq.read_table(f).column("input_ids").to_pylist())
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out
