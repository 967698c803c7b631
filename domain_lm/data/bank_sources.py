"""Task records from the shared development datasets (``../shared/data``), for the benches and configs.

Each loader reads one dataset from a data directory given at run time (several of these licences
forbid shipping the data: nothing here is copied into the package) and returns ``TaskRecord``s
shaped for a bundled template, each with its *group* (the document, company, report context or
query it comes from) so that splits never cut through a document (``records.split_records``).

English: FiNER-ORD and FIN NER (``entities``), TAT-QA numeric span questions (``extraction``: the
table and the question's relevant paragraphs, the evidence the table row or sentence), ECTSum
(``report_summary`` and ``key_points``: the transcript's sentences that carry figures, in order),
Financial PhraseBank (``sentiment``). KPI-EDGAR and NLU++ extraction rows come from the embedded
subsets (``domain_lm.data.embedded``). Chinese (BBT-FinCUGE, CLUENER): FinFE (``sentiment``),
FinNA (``report_summary``), CLUENER (``entities``: company / organisation / government -> ORG,
name -> PER, address / scene -> LOC).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from domain_lm.data.records import TaskRecord
from domain_lm.errors import DataError

#: Longest TAT-QA text (table + relevant paragraphs) kept; longer contexts are skipped.
TATQA_MAX_CHARS = 1600
#: Characters of an ECTSum transcript the model sees (the sentences with figures, in order).
ECTSUM_MAX_CHARS = 1200
CLUENER_TYPES = {"company": "ORG", "organization": "ORG", "government": "ORG", "name": "PER", "address": "LOC", "scene": "LOC"}
FINFE_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
NER_TYPES = ("ORG", "PER", "LOC")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist: pass the shared data directory (the one holding README.md and the dataset folders).")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _entities(ents: Iterable[dict[str, Any]], types: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Entities as the template wants them: text + type (ORG/PER/LOC), in order of appearance."""
    out = []
    for e in sorted(ents, key=lambda e: e.get("start", 0)):
        t = types.get(e["type"], "") if types is not None else e["type"]
        if t in NER_TYPES:
            out.append({"text": e["text"], "type": t})
    return out


# --------------------------------------------------------------------------- English


def finer_ord(data: Path) -> list[TaskRecord]:
    """FiNER-ORD news sentences (train and val files; a document's sentences share a group)."""
    out = []
    for part in ("train", "val"):
        for r in read_jsonl(data / "finer_ord" / f"{part}.jsonl"):
            out.append(TaskRecord("entities", "en", {"text": r["text"]}, _entities(r["entities"]), f"finer_ord:{part}:{r['doc_idx']}"))
    return out


def fin_ner(data: Path) -> list[TaskRecord]:
    """FIN NER loan-agreement sentences (5 agreements; MISC dropped)."""
    return [
        TaskRecord("entities", "en", {"text": r["text"]}, _entities(r["entities"]), f"fin_ner:{r['doc_idx']}")
        for r in read_jsonl(data / "fin_ner" / "train.jsonl")
    ]


def fpb(data: Path) -> list[TaskRecord]:
    """Financial PhraseBank sentences (no document ids: each sentence is its own group)."""
    return [TaskRecord("sentiment", "en", {"text": r["text"]}, r["label"]) for r in read_jsonl(data / "fpb" / "train.jsonl")]


_YEAR = re.compile(r"\b(?:19|20)\d\d\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"$])")


def tatqa(data: Path, max_chars: int = TATQA_MAX_CHARS) -> list[TaskRecord]:
    """TAT-QA questions whose answer is one number copied from the report (answer type ``span``).

    The text is the linearised table (when the answer comes from it) and the question's relevant
    paragraphs; the evidence is the one table row holding the answer as a cell, else the one
    sentence holding it; the period is the question's year when the text names it (and an input
    whenever the field was cut from "What was <field> in <year>?"). Questions
    whose context passes ``max_chars`` or whose answer cannot be pinned to one row/sentence are skipped.
    """
    from domain_lm.data.embedded_sources import _TATQA_QUESTION, linearize_table, parse_amount

    contexts = json.loads((data / "tatqa" / "dev.json").read_text(encoding="utf-8"))
    out = []
    for ctx in contexts:
        table = linearize_table(ctx["table"]["table"])
        paras = {str(p["order"]): p["text"] for p in ctx["paragraphs"]}
        for q in ctx["questions"]:
            if q["answer_type"] != "span" or len(q["answer"]) != 1:
                continue
            answer = str(q["answer"][0]).strip()
            value = parse_amount(answer)
            if value is None:
                continue
            parts = ([table] if q["answer_from"] in ("table", "table-text") else []) + [
                paras[i] for i in map(str, q.get("rel_paragraphs") or []) if i in paras
            ]
            text = "\n".join(parts)
            evidence = _tatqa_evidence(answer, text)
            if len(text) > max_chars or evidence is None:
                continue
            m = _TATQA_QUESTION.match(q["question"].strip())
            field_ = " ".join(m["field"].split()) if m else q["question"].strip().rstrip("?").strip()
            years = _YEAR.findall(q["question"])
            period = years[0] if len(years) == 1 and years[0] in text else None
            percent = answer.endswith("%") or q["scale"] == "percent"
            unit = "%" if percent else " ".join(u for u in ("USD" if "$" in answer else None, q["scale"] or None) if u) or None
            output = {"evidence": evidence, "value": value, "unit": unit, "period": period}
            # "What was X in 2019?" asks for X's 2019 column: the year leaves the field, so it must be the period.
            inputs = {"text": text, "field": field_[:200], "period": m["year"] if m else None}
            out.append(TaskRecord("extraction", "en", inputs, output, f"tatqa:{ctx['table']['uid']}"))
    return out


def _tatqa_evidence(answer: str, text: str) -> str | None:
    """The one line with a table cell equal to ``answer``, else the one sentence holding it as a number."""
    from domain_lm.data.embedded_sources import table_cell_value

    rows = [ln for ln in text.split("\n") if " | " in ln and answer in [table_cell_value(c) for c in ln.split(" | ")]]
    if len(rows) == 1:
        return rows[0].strip()
    number = re.compile(rf"(?<![\d.,]){re.escape(answer)}(?![\d]|[.,]\d)")
    sents = [s.strip() for ln in text.split("\n") if " | " not in ln for s in _SENTENCE.split(ln) if number.search(s)]
    return sents[0] if len(sents) == 1 else None


TATQA_LOOKUPS_PER_TABLE = 8
# A figure as reports write it ("$ 1,452.4", "(89)", "7.5%"); not "2.978,478", a typo upstream.
_WELL_FORMED = re.compile(r"\$?\s*\(?-?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\)?\s*%?")


def tatqa_table_lookups(
    data: Path, max_chars: int = TATQA_MAX_CHARS, per_table: int = TATQA_LOOKUPS_PER_TABLE, seed: int = 42
) -> list[TaskRecord]:
    """Table lookups made from TAT-QA's report tables: "<row name>" in "<year>" answered by the cell in
    that row and year's column (evidence: the row's line), up to ``per_table`` seeded cells per table.

    TAT-QA has ~250 usable span questions; reading a figure off the right row and column is most of
    what they ask, and every table holds dozens of such figures. A lookup's group is its report's, so
    it falls on the same side of a split as the report's own questions (never train on a held-out
    table). Only rows whose name is unique in the table, columns whose label names exactly one year
    (and no other column that year), and cells holding one number are used; the unit is the table's
    scale as its own questions give it.
    """
    from collections import Counter

    from domain_lm.data.embedded_sources import column_labels, parse_amount, table_lines

    contexts = json.loads((data / "tatqa" / "dev.json").read_text(encoding="utf-8"))
    rng = random.Random(seed)
    out = []
    for ctx in contexts:
        raw = ctx["table"]["table"]
        n_header, labels = header = column_labels(raw)
        lines = table_lines(raw, header)
        text = "\n".join(line for _, line in lines)
        if len(text) > max_chars:
            continue
        years = [_YEAR.findall(label) for label in labels]
        year_of = {j: y[0] for j, y in enumerate(years) if j and len(y) == 1 and sum(y[0] in z for z in years) == 1}
        names = Counter(row[0].strip() for row in raw)
        scales = Counter(q["scale"] for q in ctx["questions"] if q["answer_from"] in ("table", "table-text"))
        scale = scales.most_common(1)[0][0] if scales else ""
        candidates = []
        for i, line in lines:
            name = raw[i][0].strip().rstrip(":").strip()
            if i < n_header or not name or names[raw[i][0].strip()] != 1 or text.count(line) != 1:
                continue
            for j, year in year_of.items():
                cell = raw[i][j].strip() if j < len(raw[i]) else ""
                value = parse_amount(cell)
                if value is None or not _WELL_FORMED.fullmatch(cell):
                    continue
                percent = cell.endswith("%") or scale == "percent"
                unit = "%" if percent else " ".join(u for u in ("USD" if "$" in cell else None, scale or None) if u) or None
                output = {"evidence": line, "value": value, "unit": unit, "period": year}
                inputs = {"text": text, "field": name[:200], "period": year}
                candidates.append(TaskRecord("extraction", "en", inputs, output, f"tatqa:{ctx['table']['uid']}"))
        out += rng.sample(candidates, min(per_table, len(candidates)))
    return out


def embedded_extraction(name: str) -> list[TaskRecord]:
    """KPI-EDGAR (``kpi_edgar/extraction``) or NLU++ (``nlupp_banking/extraction``) rows of the embedded data."""
    from domain_lm.data import embedded

    return [TaskRecord(ex.task, ex.lang, dict(ex.inputs), ex.output, ex.doc) for ex in embedded.task_examples(name)]


_FIGURE = re.compile(r"\d")
_FINANCE = re.compile(
    r"revenue|sales|earnings|income|profit|eps|per share|margin|guidance|outlook|expect|billion|million|percent|%|cash flow|dividend",
    re.I,
)


def salient_sentences(transcript: str, max_chars: int = ECTSUM_MAX_CHARS) -> str:
    """The transcript's lines that state figures about results (a digit and a finance word), in their
    order, up to ``max_chars``: where an earnings-call summary's facts come from. Calls with fewer
    such lines are filled with their first lines."""
    lines = [ln.strip() for ln in transcript.splitlines() if ln.strip()]
    keep = [i for i, ln in enumerate(lines) if _FIGURE.search(ln) and _FINANCE.search(ln)]
    chosen: list[int] = []
    size = 0
    for i in keep + [i for i in range(len(lines)) if i not in keep]:
        if size + len(lines[i]) + 1 > max_chars:
            if size:
                continue
            return lines[i][:max_chars]
        chosen.append(i)
        size += len(lines[i]) + 1
    return "\n".join(lines[i] for i in sorted(chosen))


def lead(text: str, n: int = 3, lang: str = "en") -> str:
    """The first ``n`` sentences (lines count as sentence ends): the lead-n summary baseline."""
    pattern = r"(?<=[。！？；])|\n" if lang == "zh" else r"(?<=[.!?])\s+|\n"
    sents = [s.strip() for s in re.split(pattern, text) if s.strip()]
    return ("" if lang == "zh" else "\n").join(sents[:n])


def _ectsum_rows(data: Path) -> list[dict[str, Any]]:
    return read_jsonl(data / "ectsum" / "train.jsonl") + read_jsonl(data / "ectsum" / "val.jsonl")


def ectsum(data: Path, max_chars: int = ECTSUM_MAX_CHARS) -> list[TaskRecord]:
    """ECTSum earnings calls -> ``report_summary``: the salient sentences in, the bullet summary out
    (one bullet a line). A company's calls share a group (``id`` is TICKER_qN_YEAR)."""
    return [
        TaskRecord("report_summary", "en", {"text": salient_sentences(r["transcript"], max_chars)}, _bullets(r["summary"]),
                   _ticker(r["id"]))
        for r in _ectsum_rows(data)
    ]


def ectsum_key_points(data: Path, max_chars: int = ECTSUM_MAX_CHARS) -> list[TaskRecord]:
    """ECTSum -> ``key_points``: the summary bullets are performance points (ECTSum has no risk points)."""
    out = []
    for r in _ectsum_rows(data):
        points = _bullets(r["summary"]).split("\n")[:8]
        out.append(TaskRecord("key_points", "en", {"text": salient_sentences(r["transcript"], max_chars)},
                              {"performance": points, "risks": []}, _ticker(r["id"])))
    return out


def _bullets(summary: str) -> str:
    return "\n".join(ln.strip() for ln in summary.splitlines() if ln.strip())


def _ticker(call_id: str) -> str:
    return "ectsum:" + str(call_id).split("_")[0]


# --------------------------------------------------------------------------- Chinese


def finfe(data: Path) -> list[TaskRecord]:
    """BBT-FinCUGE FinFE social-media posts: 0 negative / 1 neutral / 2 positive."""
    rows = read_jsonl(data / "bbt_fincuge" / "finfe" / "train.jsonl")
    return [TaskRecord("sentiment", "zh", {"text": r["text"]}, FINFE_LABELS[int(r["label"])]) for r in rows]


def finna(data: Path) -> list[TaskRecord]:
    """BBT-FinCUGE FinNA news: the article in, its one-line summary out."""
    rows = read_jsonl(data / "bbt_fincuge" / "finna" / "train.jsonl")
    return [TaskRecord("report_summary", "zh", {"text": r["text"]}, r["summary"].strip()) for r in rows]


def cluener(data: Path) -> list[TaskRecord]:
    """CLUENER sentences: organisations, people and places (other types dropped)."""
    return [
        TaskRecord("entities", "zh", {"text": r["text"]}, _entities(r["entities"], CLUENER_TYPES))
        for r in read_jsonl(data / "cluener" / "train.jsonl")
    ]


#: Source name -> loader(data_dir): the datasets the benches can mix.
SOURCES: dict[str, Callable[[Path], list[TaskRecord]]] = {
    "finer_ord": finer_ord,
    "fin_ner": fin_ner,
    "fpb": fpb,
    "tatqa": tatqa,
    "tatqa_tables": tatqa_table_lookups,
    "kpi_edgar": lambda data: embedded_extraction("kpi_edgar/extraction"),
    "nlupp": lambda data: embedded_extraction("nlupp_banking/extraction"),
    "ectsum": ectsum,
    "ectsum_key_points": ectsum_key_points,
    "finfe": finfe,
    "finna": finna,
    "cluener": cluener,
}


def load_source(name: str, data: str | Path) -> list[TaskRecord]:
    """Records of one source by name (``SOURCES``); ``DataError`` names the known ones."""
    if name not in SOURCES:
        raise DataError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name](Path(data))
