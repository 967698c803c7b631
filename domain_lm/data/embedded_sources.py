"""Pure functions that turn upstream rows (as read from ``../shared/data``) into embedded records.

One function per source; each takes plain Python rows and returns the rows to ship, deterministic
for a given seed (``random.Random(seed)``, stable sorts, no set iteration). The I/O (reading the
shared files, writing ``.jsonl.gz``) lives in ``embedded_build``. Every returned row carries ``doc``.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

Row = dict[str, Any]

# --------------------------------------------------------------------------- text helpers

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", "%", ")", "]", "}", "'s", "n't", "’s"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "€", "£"}
_APOSTROPHES = {"'", "’"}
_YEAR = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"“])")


def detokenize(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join tokens into readable text (no space before closing punctuation, after ``(``/``$``, in
    ``Borrower ' s``) and return it with each token's ``(start, end)`` offsets into it."""
    text = ""
    spans: list[tuple[int, int]] = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        glue = (
            i == 0
            or tok in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (tok in _APOSTROPHES and nxt == "s")
            or (tok == "s" and prev in _APOSTROPHES)
        )
        if not glue:
            text += " "
        spans.append((len(text), len(text) + len(tok)))
        text += tok
    return text, spans


def mentions_year(text: str, year: int) -> bool:
    return re.search(rf"(?<!\d){year}(?!\d)", text) is not None


def parse_amount(s: str) -> int | float | None:
    """``"$1,496.5"`` -> 1496.5, ``"(1,234)"`` -> -1234, ``"13.0%"`` -> 13.0; None if not one number.

    Integers stay ``int`` so the target JSON writes the number the way the text does."""
    t = s.strip().replace("$", "").replace("%", "").replace(",", "").replace(" ", "")
    neg = t.startswith("(") and t.endswith(")")
    t = t.strip("()")
    if not re.fullmatch(r"-?\d+(\.\d+)?", t):
        return None
    value: int | float = float(t) if "." in t else int(t)
    return -value if neg else value


def numbers_in(text: str) -> list[int | float]:
    """The numbers written in ``text`` (``$1,234.5``, ``(12)``, ``7%``), parsed with ``parse_amount``."""
    found = (parse_amount(m) for m in re.findall(r"\(?-?\d[\d,]*(?:\.\d+)?\)?", text))
    return [v for v in found if v is not None]


def stratified_sample(rows: Sequence[Row], key: Callable[[Row], str], per_class: int, seed: int) -> list[Row]:
    """Up to ``per_class`` rows of each class (seeded), returned in their original order."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_class[key(r)].append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for label in sorted(by_class):
        idx = by_class[label]
        keep += idx if len(idx) <= per_class else rng.sample(idx, per_class)
    return [rows[i] for i in sorted(keep)]


def dedupe_by_text(rows: Sequence[Row], norm: Callable[[str], str]) -> list[Row]:
    """Drop repeated texts (after ``norm``); a text seen with two different labels is dropped entirely."""
    labels: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        labels[norm(r["text"])].add(r["label"])
    seen: set[str] = set()
    out = []
    for r in rows:
        k = norm(r["text"])
        if len(labels[k]) == 1 and k not in seen:
            seen.add(k)
            out.append(r)
    return out


# --------------------------------------------------------------------------- label tasks


def _tweet_key(text: str) -> str:
    # The same headline is often tweeted with and without a "$TICKER -" prefix or a link.
    t = re.sub(r"https?://\S+", " ", text)
    t = re.sub(r"\$[A-Za-z][A-Za-z.^]*", " ", t)
    return " ".join(re.sub(r"[^a-z0-9]+", " ", t.lower()).split())


def twitter_sentiment(rows: Sequence[Row], per_class: int, seed: int) -> list[Row]:
    """A class-balanced, de-duplicated subset of the finance tweets; upstream labels kept."""
    numbered = [{"doc": f"tweet:{i}", "text": r["text"], "label": r["label"]} for i, r in enumerate(rows)]
    return stratified_sample(dedupe_by_text(numbered, _tweet_key), lambda r: r["label"], per_class, seed)


def banking77(rows: Sequence[Row]) -> list[Row]:
    """Every Banking77 query, minus repeated texts; one document per query; upstream labels kept."""
    numbered = [{"doc": f"banking77:{i}", "text": r["text"], "label": r["label"]} for i, r in enumerate(rows)]
    return dedupe_by_text(numbered, lambda t: " ".join(t.lower().split()))


# --------------------------------------------------------------------------- FIN NER


def fin_ner(rows: Sequence[Row], max_chars: int, min_tokens_without_entities: int) -> tuple[list[Row], list[Row]]:
    """(entity rows, corpus documents) from the FIN NER sentences.

    Text is detokenised (entity offsets are moved with it), MISC entities are dropped (the entities
    template knows ORG / PER / LOC), sentences longer than ``max_chars`` are kept only in the corpus,
    and entity-free sentences need ``min_tokens_without_entities`` tokens (section headings go).
    """
    out: list[Row] = []
    per_doc: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        tokens = r["tokens"]
        text, spans = detokenize(tokens)
        per_doc[r["doc_idx"]].append(text)
        starts, ends = _token_offsets(tokens)
        ents = []
        for e in r["entities"]:
            if e["type"] not in ("ORG", "PER", "LOC"):
                continue
            first, last = starts[e["start"]], ends[e["end"]]
            a, b = spans[first][0], spans[last][1]
            ents.append({"text": text[a:b], "type": e["type"], "start": a, "end": b})
        if len(text) > max_chars or (not ents and len(tokens) < min_tokens_without_entities):
            continue
        out.append({"doc": f"fin_ner:{r['doc_idx']}", "sent": r["sent_idx"], "text": text, "entities": ents})
    corpus = [
        {"doc": f"fin_ner:{d}", "source": f"FIN5 loan agreement {d}", "text": "\n".join(sents)} for d, sents in sorted(per_doc.items())
    ]
    return out, corpus


def _token_offsets(tokens: Sequence[str]) -> tuple[dict[int, int], dict[int, int]]:
    """Char start -> token index and char end -> token index in ``" ".join(tokens)`` (the upstream offsets)."""
    starts, ends, pos = {}, {}, 0
    for i, t in enumerate(tokens):
        starts[pos] = i
        ends[pos + len(t)] = i
        pos += len(t) + 1
    return starts, ends


# --------------------------------------------------------------------------- KPI-EDGAR

_LABEL = re.compile(r"^(?P<lab>[a-z_]+?\d?)_(?P<rel>\d+(?:_\d+)*)$")
_NUMBER_TOKEN = re.compile(r"^\(?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\)?$")
_CURRENCY = {"$": "USD", "€": "EUR", "£": "GBP"}
_SCALE = {
    "thousand": "thousand",
    "thousands": "thousand",
    "million": "million",
    "millions": "million",
    "billion": "billion",
    "billions": "billion",
    "trillion": "trillion",
}
_PERCENT = {"%", "percent"}
_PRIOR_YEAR = re.compile(r"\b(?:prior|previous|last|preceding)[ -](?:fiscal )?year\b", re.I)
NULL_ANSWER = {"value": None, "unit": None, "period": None, "evidence": None}


@dataclass
class KpiSentence:
    blob: Any
    tokens: list[str]
    labels: list[str | None]  # the manual annotation under each token


@dataclass
class KpiDocument:
    file: str
    year: int
    sentences: list[KpiSentence] = field(default_factory=list)

    @property
    def ticker(self) -> str:
        return self.file.split("_")[0]


def kpi_documents(sheets: dict[str, list[list[Any]]]) -> list[KpiDocument]:
    """Parse the KPI-EDGAR workbook: one sheet per 10-K (row 1: file, split, 'current year', year), then
    per sentence the rows Blob ID / Sentence ID / Sentence / Secondary / Manual Annotations / Comment.
    Cells are given as Python values with None for empty. Sheets without sentences are skipped."""
    docs = []
    for name, rows in sheets.items():
        if name in ("possible_relations", "legend") or len(rows) < 3:
            continue
        head = list(rows[0]) + [None] * 4
        doc = KpiDocument(file=str(head[0]), year=int(head[3]))
        for i, row in enumerate(rows):
            if row[0] != "Sentence":
                continue
            n = max((j for j, v in enumerate(row) if j and v is not None), default=0)
            tokens = [str(v) for v in row[1 : n + 1]]
            manual = _row_named(rows, i, "Manual Annotations")
            labels = [None if v is None else str(v) for v in (manual[1 : n + 1] if manual else [])]
            labels += [None] * (n - len(labels))
            blob = _row_named(rows, i, "Blob ID", back=True)
            doc.sentences.append(KpiSentence(blob=blob[1] if blob else None, tokens=tokens, labels=labels))
        docs.append(doc)
    return docs


def _row_named(rows: list[list[Any]], i: int, name: str, back: bool = False) -> list[Any] | None:
    """The row labelled ``name`` within the sentence block around row ``i`` (before it if ``back``)."""
    rng = range(i - 1, max(i - 4, -1), -1) if back else range(i + 1, min(i + 4, len(rows)))
    return next((rows[j] for j in rng if rows[j][0] == name), None)


def _relations(labels: Sequence[str | None]) -> dict[tuple[str, str], list[int]]:
    """(label, relation id) -> token indices, e.g. ("kpi", "1") -> [4, 5, 6]."""
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, cell in enumerate(labels):
        for part in (cell or "").split(","):
            m = _LABEL.match(part.strip())
            if m:
                out[(m["lab"], m["rel"])].append(i)
    return out


def _value_span(tokens: Sequence[str], i: int) -> tuple[int, int, str | None]:
    """Token range of a value with its currency sign and scale word, and the unit they spell."""
    first, last = i, i
    currency = scale = None
    if i > 0 and tokens[i - 1] in _CURRENCY:
        first, currency = i - 1, _CURRENCY[tokens[i - 1]]
    if i + 1 < len(tokens) and tokens[i + 1].lower() in _SCALE:
        last, scale = i + 1, _SCALE[tokens[i + 1].lower()]
    elif i + 1 < len(tokens) and tokens[i + 1].lower() in _PERCENT:
        last, scale = i + 1, "%"
    unit = " ".join(u for u in (currency, scale) if u) or None
    return first, last, unit


def kpi_extraction(docs: Sequence[KpiDocument], max_chars: int, max_evidence: int, null_share: float, seed: int) -> list[Row]:
    """Extraction rows: a KPI's current-year (cy) or prior-year (py) value in one 10-K sentence.

    The period asked is the fiscal year (cy) or the year before (py), and only when the sentence
    names that year, so the answer is in the text; a cy value in a sentence naming no year at all is
    asked without a period. Unanswerable rows (all-null answer) ask for the prior year of a KPI whose
    sentence names the current year only; they are ``null_share`` of the positives (seeded sample).
    """
    positives: list[Row] = []
    nulls: list[Row] = []
    for d in docs:
        for s in d.sentences:
            text, spans = detokenize(s.tokens)
            if len(text) > max_chars:
                continue
            rel = _relations(s.labels)
            for (lab, n), idx in sorted(rel.items()):
                if lab != "kpi" or n == "0" or idx != list(range(idx[0], idx[-1] + 1)):
                    continue
                field_ = text[spans[idx[0]][0] : spans[idx[-1]][1]]
                if not (3 <= len(field_) <= 120 and re.search(r"[A-Za-z]", field_)):
                    continue
                for lab_v, year in (("cy", d.year), ("py", d.year - 1)):
                    row = _kpi_row(d, s.tokens, text, spans, idx, field_, rel.get((lab_v, n), []), year, lab_v, max_evidence)
                    if row:
                        positives.append(row)
                if rel.get(("cy", n)) and not rel.get(("py", n)) and not rel.get(("py1", n)):
                    if mentions_year(text, d.year) and not mentions_year(text, d.year - 1) and not _PRIOR_YEAR.search(text):
                        nulls.append(_row(d, text, field_, str(d.year - 1), dict(NULL_ANSWER), None))
    positives = _unique(positives)
    nulls = _unique(nulls)
    k = min(len(nulls), round(null_share * len(positives)))
    chosen = set(random.Random(seed).sample(range(len(nulls)), k))
    return positives + [r for i, r in enumerate(nulls) if i in chosen]


def _row(d: KpiDocument, text: str, field_: str, period: str | None, answer: dict[str, Any], evidence_start: int | None) -> Row:
    return {
        "doc": f"kpi_edgar:{d.ticker}",
        "filing": d.file,
        "text": text,
        "field": field_,
        "period": period,
        "answer": answer,
        "evidence_start": evidence_start,
    }


def _kpi_row(
    d: KpiDocument,
    tokens: Sequence[str],
    text: str,
    spans: list[tuple[int, int]],
    kpi: list[int],
    field_: str,
    vals: list[int],
    year: int,
    lab: str,
    max_evidence: int,
) -> Row | None:
    if len(vals) != 1 or not _NUMBER_TOKEN.match(tokens[vals[0]]):
        return None
    value = parse_amount(tokens[vals[0]])
    if value is None:
        return None
    if mentions_year(text, year):
        period: str | None = str(year)
    elif lab == "cy" and not _YEAR.search(text):
        period = None  # the sentence reports one period and does not name it
    else:
        return None
    first, last, unit = _value_span(tokens, vals[0])
    a, b = min(spans[kpi[0]][0], spans[first][0]), max(spans[kpi[-1]][1], spans[last][1])
    if b - a > max_evidence:
        return None
    answer = {"value": value, "unit": unit, "period": period, "evidence": text[a:b]}
    return _row(d, text, field_, period, answer, a)


def _unique(rows: Iterable[Row]) -> list[Row]:
    """First row per (text, field, period): 10-Ks of one company repeat sentences across years."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        k = (r["text"], r["field"], r["period"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def kpi_corpus(docs: Sequence[KpiDocument]) -> list[Row]:
    """One corpus document per 10-K: its annotated sentences, paragraphs (blobs) separated by a blank line."""
    out = []
    for d in docs:
        paras: list[list[str]] = []
        last_blob: Any = object()
        for s in d.sentences:
            if s.blob != last_blob:
                paras.append([])
                last_blob = s.blob
            paras[-1].append(detokenize(s.tokens)[0])
        text = "\n\n".join(" ".join(p) for p in paras)
        if text.strip():
            out.append({"doc": f"kpi_edgar:{d.ticker}", "source": d.file, "text": text})
    return out


# --------------------------------------------------------------------------- TAT-QA

_TATQA_QUESTION = re.compile(
    r"^(?:What|How much) (?:is|was|were|are) (?:the )?(?:(?:amount|value) of )?(?P<field>.+?)"
    r" (?:in|for|as at|as of|at|during) (?:the )?(?:fiscal |FY ?)?(?P<year>(?:19|20)\d\d)\s*\?\s*$",
    re.I,
)


_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?"
# Dates, periods and scales in column headers: "December 31", "30 June", "1/1/19", "Q4", "H1", "FY19", "$'000".
_HEADER_FIGURES = re.compile(
    rf"{_MONTH}\s*\d{{1,2}}\b|\b\d{{1,2}}\s*{_MONTH}|\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b|\b(?:Q[1-4]|H[12]|FY\s?\d\d)\b|[’']000\b", re.I
)
_YEARISH = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")
_FOOTNOTE = re.compile(r"\((?:note\s*)?\d{1,2}\)|\[\d{1,2}\]", re.I)  # "2019 (1)", "[2]", "(Note 23)"
MAX_COLUMN_LABEL = 40


def _is_header_cell(cell: str) -> bool:
    """A cell that names a column ("2019", "Fiscal 2018 €m", "December 31,", "July 27, 2019 (1)",
    "(in millions)"), not a figure."""
    return not re.search(r"\d", _YEARISH.sub("", _HEADER_FIGURES.sub("", _FOOTNOTE.sub("", cell)).replace(" ", "")))


def column_labels(table: Sequence[Sequence[str]]) -> tuple[int, list[str]]:
    """(number of header rows, label of each column) of a report table.

    Header rows are the leading rows without a figure. A column's label is its cell in the lowest
    header row that tells columns apart; higher rows are put in front only while two columns still
    share a label ("Domestic 2019" and "International 2019" over "2019 | 2018 | 2019 | 2018"). A
    higher row's cell spans rightwards to the next one ("Domestic", "", "International", ""); a row
    with one cell (a title over every column) or the same text over every column tells no column from
    another and is left out. Column 0 (the row names) has no label."""
    n_header = 0
    for row in table:
        if any(c.strip() for c in row[1:]) and not all(_is_header_cell(c) for c in row[1:] if c.strip()):
            break
        n_header += 1
    width = max((len(r) for r in table), default=0)
    labels = [""] * width
    for row in reversed(table[:n_header]):
        named = [c for c in labels[1:] if c]
        if named and len(set(named)) == len(named):
            break
        cells = [c.strip() for c in row[1:]] + [""] * (width - len(row))
        if sum(1 for c in cells if c) < 2:
            continue
        filled, last = [], ""
        for c in cells:
            last = c or last
            filled.append(last)
        if len(set(filled)) < 2:
            continue
        row_cells = cells if not named else filled  # the lowest row names its own columns; higher rows span
        for j, c in enumerate(row_cells, start=1):
            labels[j] = f"{c} {labels[j]}".strip() if c else labels[j]
    return n_header, [" ".join(x.split())[:MAX_COLUMN_LABEL] for x in labels]


def table_lines(table: Sequence[Sequence[str]], header: tuple[int, list[str]] | None = None) -> list[tuple[int, str]]:
    """(row index, line) of each non-empty table row: cells separated by `` | `` (empty cells dropped);
    below the header rows each figure carries its column's label ("Service | 2019: 12,899 | 2018: 12,621"),
    so which year a figure belongs to is on its own line, not in header rows above it. ``header`` is
    ``column_labels(table)`` when the caller has it already."""
    n_header, labels = header or column_labels(table)
    out = []
    for i, row in enumerate(table):
        cells = []
        for j, c in enumerate(row):
            c = c.strip()
            if c:
                cells.append(f"{labels[j]}: {c}" if i >= n_header and j and labels[j] else c)
        if cells:
            out.append((i, " | ".join(cells)))
    return out


def linearize_table(table: Sequence[Sequence[str]]) -> str:
    """The table as text, one line per row (``table_lines``)."""
    return "\n".join(line for _, line in table_lines(table))


def table_cell_value(cell: str) -> str:
    """A linearised cell's figure without its column label ("2018: 12,621" -> "12,621")."""
    return cell.rsplit(": ", 1)[-1].strip()


def tatqa(contexts: Sequence[Row], max_table_chars: int, max_text_chars: int, max_evidence: int) -> tuple[list[Row], list[Row]]:
    """(extraction rows, corpus documents) from TAT-QA report contexts (table + paragraphs).

    Extraction uses the span questions "What was <field> in <year>?" whose single numeric answer is a
    table cell (text: the linearised table, evidence: its row) or sits in one paragraph (text: the
    paragraph, evidence: the sentence). The corpus holds each context's paragraphs, plus its table
    when the table is short.
    """
    rows: list[Row] = []
    corpus: list[Row] = []
    for ctx in contexts:
        doc = f"tatqa:{ctx['table']['uid']}"
        table = linearize_table(ctx["table"]["table"])
        paras = [p["text"] for p in sorted(ctx["paragraphs"], key=lambda p: p["order"])]
        corpus.append({"doc": doc, "source": "TAT-QA dev", "text": "\n\n".join(paras + ([table] if len(table) <= max_table_chars else []))})
        for q in sorted(ctx["questions"], key=lambda q: q["order"]):
            row = _tatqa_row(doc, q, table, paras, max_table_chars, max_text_chars, max_evidence)
            if row:
                rows.append(row)
    return rows, corpus


def _tatqa_row(doc: str, q: Row, table: str, paras: list[str], max_table: int, max_text: int, max_evidence: int) -> Row | None:
    if q["answer_type"] != "span" or len(q["answer"]) != 1:
        return None
    answer = str(q["answer"][0]).strip()
    value = parse_amount(answer)
    m = _TATQA_QUESTION.match(q["question"].strip())
    if value is None or not m:
        return None
    text, evidence = _tatqa_evidence(answer, table, paras, max_table, max_text)
    if text is None or evidence is None or len(evidence) > max_evidence or not mentions_year(text, int(m["year"])):
        return None
    percent = answer.endswith("%") or q["scale"] == "percent"
    unit = "%" if percent else " ".join(u for u in ("USD" if "$" in answer else None, q["scale"] or None) if u) or None
    field_ = " ".join(m["field"].split())
    out = {"value": value, "unit": unit, "period": m["year"], "evidence": evidence}
    return {
        "doc": doc,
        "question": q["question"].strip(),
        "text": text,
        "field": field_,
        "period": m["year"],
        "answer": out,
        "evidence_start": text.index(evidence),
    }


def _tatqa_evidence(answer: str, table: str, paras: list[str], max_table: int, max_text: int) -> tuple[str | None, str | None]:
    """(text, evidence): the table and the one row with a cell equal to the answer, else the one
    paragraph and sentence that contain it."""
    lines = table.split("\n")
    hits = [ln for ln in lines if answer in [table_cell_value(c) for c in ln.split(" | ")]]
    if len(table) <= max_table and len(hits) == 1 and table.count(hits[0]) == 1:
        return table, hits[0]
    # The answer as a whole number: "7" must not match inside "2017".
    pattern = re.compile(rf"(?<![\d.,]){re.escape(answer)}(?![\d]|[.,]\d)")
    in_paras = [p for p in paras if len(pattern.findall(p)) == 1]
    if len(in_paras) == 1 and len(in_paras[0]) <= max_text:
        sents = [s for s in _SENTENCE_END.split(in_paras[0]) if pattern.search(s)]
        if len(sents) == 1:
            return in_paras[0], sents[0]
    return None, None


# --------------------------------------------------------------------------- NLU++ banking amounts

_NLUPP_CURRENCY = {"GBP": "GBP", "EUR": "EUR", "USD": "USD"}
NLUPP_FIELD = "amount of money"


def nlupp_amounts(rows: Sequence[Row], max_chars: int, seed: int) -> list[Row]:
    """Extraction rows from NLU++ banking queries: the ``amount_of_money`` slot (value, currency, the
    slot text as evidence) when its number is written in digits, plus as many seeded queries without
    an amount, answered all-null."""
    positives: list[Row] = []
    candidates: list[Row] = []
    for i, r in enumerate(rows):
        text = r["text"]
        if len(text) > max_chars:
            continue
        slot = r["slots"].get("amount_of_money")
        base = {"doc": f"nlupp:{i}", "text": text, "field": NLUPP_FIELD, "period": None}
        if slot is None:
            candidates.append({**base, "answer": dict(NULL_ANSWER), "evidence_start": None})
            continue
        a, b = slot["span"]
        amount = slot.get("value", {}).get("amount")
        # Grounded answers only: the number must be written in the slot ("1 thousand dollars" is not).
        if text[a:b] != slot["text"] or not isinstance(amount, (int, float)) or amount not in numbers_in(slot["text"]):
            continue
        value = int(amount) if float(amount).is_integer() and "." not in slot["text"] else amount
        unit = _NLUPP_CURRENCY.get(slot["value"].get("currency"))
        positives.append({**base, "answer": {"value": value, "unit": unit, "period": None, "evidence": slot["text"]}, "evidence_start": a})
    chosen = set(random.Random(seed).sample(range(len(candidates)), min(len(candidates), len(positives))))
    return positives + [r for i, r in enumerate(candidates) if i in chosen]


# --------------------------------------------------------------------------- HH-RLHF


def hh_preferences(subsets: dict[str, Sequence[Row]], take: dict[str, int], is_pair: Callable[[Row], bool]) -> list[Row]:
    """The ``take[subset]`` shortest valid pairs of each subset (length of chosen + rejected)."""
    out: list[Row] = []
    for name in sorted(take):
        rows = subsets[name]
        ranked = sorted((len(r["chosen"]) + len(r["rejected"]), i) for i, r in enumerate(rows) if is_pair(r))
        picked = sorted(i for _, i in ranked[: take[name]])
        out += [
            {"doc": f"hh_rlhf:{name}:{i}", "subset": name, "chosen": rows[i]["chosen"], "rejected": rows[i]["rejected"]} for i in picked
        ]
    return out


def first_human_turn(dialogue: str) -> str:
    m = re.search(r"Human:(.*?)(?:\n\nAssistant:|$)", dialogue, re.S)
    return " ".join((m[1] if m else dialogue).split()).lower()


def hh_general(
    subsets: dict[str, Sequence[Row]], names: Sequence[str], exclude: set[str], char_budget: int, min_chars: int, max_chars: int, seed: int
) -> list[Row]:
    """General (non-finance) dialogue text: the chosen dialogue of seeded rows of ``names`` whose
    first human turn is not in ``exclude``, until ``char_budget`` characters."""
    pool = [(n, i) for n in names for i in range(len(subsets[n]))]
    random.Random(seed).shuffle(pool)
    out: list[Row] = []
    total = 0
    seen = set(exclude)
    for n, i in pool:
        text = subsets[n][i]["chosen"].strip()
        key = first_human_turn(text)
        if not (min_chars <= len(text) <= max_chars) or key in seen:
            continue
        seen.add(key)
        out.append({"doc": f"hh_rlhf:{n}:{i}", "source": f"hh-rlhf {n}", "text": text})
        total += len(text)
        if total >= char_budget:
            break
    return sorted(out, key=lambda r: (r["doc"].split(":")[1], int(r["doc"].split(":")[2])))
