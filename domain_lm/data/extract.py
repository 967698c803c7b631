"""Read raw documents out of corpus sources: .txt/.md, .jsonl/.csv (a named text column), .pdf, .docx.

Everything is a generator so a corpus larger than memory streams through: tables are read in
chunks with pandas, files one at a time. A missing or unreadable path raises ``DataError`` naming it;
``check_sources`` does that for every source *before* anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from domain_lm.config import CorpusSource
from domain_lm.errors import DataError

SUFFIX_FORMAT = {".txt": "txt", ".md": "md", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".pdf": "pdf", ".docx": "docx"}
_TABLE_CHUNK_ROWS = 2000


@dataclass
class RawDoc:
    source: str  # file path (plus "#row" / "#doc" for multi-document files)
    text: str
    lang: str = "auto"
    doc: str | None = None  # the document id from the source's doc_column (decides the held-out split)


def source_files(src: CorpusSource) -> list[Path]:
    """The files a source covers (a file, or the supported files under a directory, sorted)."""
    p = Path(src.path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        wanted = set(SUFFIX_FORMAT) if src.format == "auto" else {k for k, v in SUFFIX_FORMAT.items() if v == src.format}
        return sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in wanted)
    raise DataError(f"Corpus source {p} does not exist. Fix the path in corpus.sources (or --source), or remove it.")


def check_sources(sources: list[CorpusSource]) -> list[tuple[CorpusSource, Path]]:
    """Every (source, file) pair; raises DataError naming the first missing/unreadable/unsupported path."""
    out = []
    for src in sources:
        files = source_files(src)
        if not files:
            raise DataError(f"Corpus source {src.path} holds no supported files ({', '.join(sorted(SUFFIX_FORMAT))}).")
        for f in files:
            fmt = file_format(src, f)
            if fmt is None:
                raise DataError(f"Corpus file {f} has an unsupported type; use one of {', '.join(sorted(SUFFIX_FORMAT))} or set format.")
            if src.doc_column is not None and fmt not in ("jsonl", "csv"):
                raise DataError(f"Corpus file {f} is {fmt}, but doc_column is set: document ids are read from jsonl/csv columns only.")
            try:
                with open(f, "rb") as fh:
                    fh.read(1)
            except OSError as e:
                raise DataError(f"Corpus file {f} cannot be read ({e.strerror}). Check its permissions.") from None
            out.append((src, f))
    return out


def file_format(src: CorpusSource, path: Path) -> str | None:
    return src.format if src.format != "auto" else SUFFIX_FORMAT.get(path.suffix.lower())


def iter_documents(sources: list[CorpusSource]) -> Iterator[RawDoc]:
    """Stream raw documents from every source, in a stable order."""
    taken: dict[int, int] = {}  # per source: documents yielded so far (for src.max_docs)
    for src, f in check_sources(sources):
        fmt = file_format(src, f)
        key = id(src)
        try:
            for doc in _READERS[fmt](src, f):
                if src.max_docs is not None and taken.get(key, 0) >= src.max_docs:
                    break
                taken[key] = taken.get(key, 0) + 1
                yield doc
        except DataError:
            raise
        except Exception as e:  # a corrupt PDF/docx/CSV: name the file, not the library's internals
            raise DataError(f"Corpus file {f} could not be read as {fmt}: {type(e).__name__}: {e}") from None


def _text_docs(src: CorpusSource, f: Path) -> Iterator[RawDoc]:
    try:
        text = f.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"Corpus file {f} is not UTF-8 text. Convert it (e.g. iconv -t utf-8) and retry.") from None
    if src.split == "blank_line":
        # One file holding many documents separated by an empty line.
        for i, part in enumerate(re.split(r"\n\s*\n", text)):
            if part.strip():
                yield RawDoc(f"{f}#doc{i}", part, src.lang)
    else:
        yield RawDoc(str(f), text, src.lang)


def _table_docs(src: CorpusSource, f: Path) -> Iterator[RawDoc]:
    import pandas as pd

    fmt = file_format(src, f)
    if fmt == "csv":
        reader = pd.read_csv(f, chunksize=_TABLE_CHUNK_ROWS, dtype=str, keep_default_na=False)
    else:
        reader = pd.read_json(f, lines=True, chunksize=_TABLE_CHUNK_ROWS, dtype=False)
    row = 0
    with reader as chunks:
        for chunk in chunks:
            for column, key in ((src.text_column, "text_column"), (src.doc_column, "doc_column")):
                if column is not None and column not in chunk.columns:
                    raise DataError(f"Corpus file {f} has no column {column!r} (columns: {list(chunk.columns)}). Set {key} in the source.")
            docs = chunk[src.doc_column].tolist() if src.doc_column else [None] * len(chunk)
            for value, doc in zip(chunk[src.text_column].tolist(), docs):
                if isinstance(value, str) and value.strip():
                    yield RawDoc(f"{f}#{row}", value, src.lang, None if src.doc_column is None else _doc_id(doc, f, row))
                row += 1


def _doc_id(value: object, f: Path, row: int) -> str:
    """A row's document id as text. A row without one is an error: it could not be kept on the side
    of the split its document is on."""
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():  # None, NaN or blank
        raise DataError(f"Corpus file {f}, row {row}: the doc_column value is empty. Give every row its document id.")
    return str(value)


def _pdf_docs(src: CorpusSource, f: Path) -> Iterator[RawDoc]:
    from pypdf import PdfReader

    reader = PdfReader(str(f))
    # Pages joined by a form feed so page-level headers/footers are seen as repeated lines later.
    pages = [(page.extract_text() or "") for page in reader.pages]
    yield RawDoc(str(f), "\n\f\n".join(pages), src.lang)


def _docx_docs(src: CorpusSource, f: Path) -> Iterator[RawDoc]:
    import docx

    d = docx.Document(str(f))
    paras = [p.text for p in d.paragraphs]
    for table in d.tables:
        for r in table.rows:
            paras.append(" | ".join(c.text for c in r.cells))
    yield RawDoc(str(f), "\n\n".join(paras), src.lang)


_READERS = {"txt": _text_docs, "md": _text_docs, "jsonl": _table_docs, "csv": _table_docs, "pdf": _pdf_docs, "docx": _docx_docs}
