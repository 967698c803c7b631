"""Build the pretraining corpus: extract -> clean -> scrub PII -> dedupe -> split -> chunk -> pack.

Two streaming passes, so memory stays bounded by one shard of ``shard_docs`` documents:

1. raw documents are cleaned, filtered, scrubbed and de-duplicated, then written to
   ``docs/<part>-NNNNN.jsonl`` shards (only ids and digests stay in memory);
2. the held-out documents are chosen by a seeded hash of their ids (so the split is by
   *document*, deterministic, and independent of file order), then each shard is chunked with
   ``langchain-text-splitters`` (token-aware, paragraph and Chinese-sentence separators) and packed
   into fixed-length blocks with EOS between documents, written to ``blocks/<part>-<split>-NNNNN.parquet``.

A build is cached under ``$DOMAIN_LM_HOME/cache/corpus/<hash>`` where the hash covers the
content of every input file, the corpus config and the tokenizer; ``build_corpus_cached`` reuses it.

Layout of a corpus directory::

    docs/domain-00000.jsonl        {"id", "source", "lang", "split", "tokens", "text"}
    blocks/domain-train-00000.parquet   column input_ids (list of token ids, <= block_size)
    blocks/domain-heldout-00000.parquet
    blocks/general-{train,heldout}-*.parquet   (when general_sources are given)
    report.json  report.md  length_hist.png
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from domain_lm.config import CorpusSection, CorpusSource
from domain_lm.core import atomic
from domain_lm.core.hashing import sha256_file, sha256_json
from domain_lm.data.corpus_clean import clean_document, detect_lang, effective_length
from domain_lm.data.dedupe import Deduper, exact_key
from domain_lm.data.extract import RawDoc, check_sources, iter_documents

CORPUS_VERSION = 1  # bump when the processing changes, so old cache entries are not reused
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


def clean_stream(raw: Iterable[RawDoc], section: CorpusSection, stats: PartStats) -> Iterator[dict[str, Any]]:
    """Clean, length-filter, scrub and de-duplicate raw documents (a generator)."""
    from domain_lm.pii import scrub

    dedupe = Deduper(threshold=section.near_dup_threshold, num_perm=section.num_perm, seed=section.seed)
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
        yield {"id": doc_id, "source": doc.source, "lang": lang, "text": text}


def write_doc_shards(docs: Iterable[dict[str, Any]], out: Path, part: str, shard_docs: int) -> tuple[list[Path], list[str]]:
    """Write documents to JSONL shards of ``shard_docs``; returns the shard paths and doc ids."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    ids: list[str] = []
    fh = None
    for doc in docs:
        if len(ids) % shard_docs == 0:
            if fh:
                fh.close()
            shards.append(out / f"{part}-{len(shards):05d}.jsonl")
            fh = shards[-1].open("w", encoding="utf-8")
        fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        ids.append(doc["id"])
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


def pack_shards(shards: list[Path], held: set[str], tokenizer, section: CorpusSection, out: Path, part: str, stats: PartStats) -> None:
    """Chunk + tokenize + pack every doc shard; rewrites the doc shards with split and token counts."""
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
            split = "heldout" if doc["id"] in held else "train"
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


def build_part(sources: list[CorpusSource], tokenizer, section: CorpusSection, out: Path, part: str) -> PartStats:
    stats = PartStats()
    shards, ids = write_doc_shards(clean_stream(iter_documents(sources), section, stats), out / "docs", part, section.shard_docs)
    held = heldout_ids(ids, section.heldout_fraction, section.seed)
    pack_shards(shards, held, tokenizer, section, out, part, stats)
    return stats


# --------------------------------------------------------------------------- report


def _plot_lengths(parts: dict[str, PartStats], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, st in parts.items():
        if st.doc_tokens:
            ax.hist(st.doc_tokens, bins=30, alpha=0.6, label=f"{name} ({len(st.doc_tokens)} docs)")
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("documents")
    ax.set_title("Document length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Corpus report", "", f"Block size {report['block_size']} tokens, chunk size {report['chunk_tokens']} tokens.", ""]
    for part in ("domain", "general"):
        r = report.get(part)
        if not r:
            continue
        lines += [f"## {part.capitalize()} text", "", "| item | value |", "|---|---|"]
        for k, v in r.items():
            lines.append(f"| {k} | {json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v} |")
        lines.append("")
    lines += ["![document length](length_hist.png)", ""]
    return "\n".join(lines)


def build_corpus(
    sources: list[CorpusSource], tokenizer, section: CorpusSection, out: str | Path, general_sources: list[CorpusSource] | None = None
) -> dict[str, Any]:
    """Build the corpus into ``out`` (which must be empty or absent); returns the report dict.

    Every source is checked first, so a bad path raises DataError before anything is written."""
    check_sources(list(sources) + list(general_sources or []))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"domain": build_part(sources, tokenizer, section, out, "domain")}
    if general_sources:
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
            "section": section.model_dump(mode="json", exclude={"cache", "sources", "general_sources"}),
            "domain": _content_key(section.sources),
            "general": _content_key(section.general_sources),
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
        raise ValueError("build_corpus_cached needs corpus.sources (the stage fills in the demo corpus when empty)")
    key = cache_key(section, tokenizer)
    entry = Path(cache_dir or cache_root()) / key
    if section.cache and (entry / "report.json").is_file():
        _copy_tree(entry, out)
        report = json.loads((entry / "report.json").read_text(encoding="utf-8"))
        return report, True
    if not section.cache:
        return build_corpus(section.sources, tokenizer, section, out, section.general_sources), False
    with atomic.atomic_dir(entry) as staging:
        report = build_corpus(section.sources, tokenizer, section, staging, section.general_sources)
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
