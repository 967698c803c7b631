"""Document cleaning: Unicode normalisation, boilerplate removal and a language tag.

Pure functions on strings, so each rule is unit-testable on its own.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# A line that is only a page marker: "12", "- 12 -", "Page 3 of 40", "3/40", "第 5 页", "第5页 共20页".
_PAGE_LINE = re.compile(
    r"^\s*(?:[-–—]?\s*\d{1,4}\s*[-–—]?|(?:page|p\.)\s*\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?|\d{1,4}\s*/\s*\d{1,4}"
    r"|第\s*\d{1,4}\s*页(?:\s*[,，/]?\s*共\s*\d{1,4}\s*页)?)\s*$",
    re.IGNORECASE,
)
# Legal boilerplate paragraphs (safe-harbour statements, disclaimers, copyright lines).
LEGAL_PATTERNS = [
    r"^\s*(?:cautionary\s+(?:note|statement)\s+regarding\s+)?forward[- ]looking\s+statements?\b",
    r"\bthis\s+(?:press\s+release|presentation|document|report|call)\s+(?:may\s+)?contains?\s+forward[- ]looking\s+statements\b",
    r"\bsafe\s+harbou?r\s+provisions?\b",
    r"^\s*(?:copyright\s*)?(?:©|\(c\))\s*\d{4}",
    r"\ball\s+rights\s+reserved\b",
    r"^\s*disclaimer\s*[:.]",
    r"^\s*(?:免责声明|风险提示)\s*[:：]",
    r"版权所有",
]
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_REPEATED_LINE_MAX_CHARS = 100


def normalise(text: str) -> str:
    """NFKC (full-width digits/letters -> ASCII, ligatures split), unified newlines, no control chars."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t\f" or unicodedata.category(ch)[0] != "C")
    return text


def detect_lang(text: str) -> str:
    """'zh' when CJK characters are at least a third of the letters, else 'en' (simple, fast, good enough
    for routing English vs Chinese bank text)."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk + latin == 0:
        return "en"
    # A CJK character carries about as much as a word, so compare to Latin letters / 3.
    return "zh" if cjk >= (cjk + latin / 3) / 3 else "en"


def effective_length(text: str) -> int:
    """Length in "Latin-character equivalents": a CJK character counts 3 (about one English word's
    worth of content), so ``min_chars`` does not throw away short but complete Chinese news items."""
    return len(text) + 2 * len(_CJK.findall(text))


def strip_boilerplate(text: str, extra_patterns: list[str] | None = None) -> tuple[str, int]:
    """Drop page-number lines, short lines repeated 3+ times in the document (running headers and
    footers) and legal-boilerplate paragraphs. Returns (text, lines/paragraphs dropped)."""
    lines = [ln.strip() for ln in text.replace("\f", "\n").split("\n")]
    counts = Counter(ln for ln in lines if ln and len(ln) <= _REPEATED_LINE_MAX_CHARS)
    repeated = {ln for ln, c in counts.items() if c >= 3}
    kept: list[str] = []
    dropped = 0
    for ln in lines:
        if ln and (_PAGE_LINE.match(ln) or ln in repeated):
            dropped += 1
            continue
        kept.append(ln)
    legal = [re.compile(p, re.IGNORECASE) for p in LEGAL_PATTERNS + list(extra_patterns or [])]
    paras = []
    for para in re.split(r"\n\s*\n", "\n".join(kept)):
        para = re.sub(r"[ \t]+", " ", para).strip()
        if not para:
            continue
        if any(p.search(para) for p in legal):
            dropped += 1
            continue
        paras.append(para)
    return "\n\n".join(paras), dropped


def clean_document(text: str, extra_patterns: list[str] | None = None) -> tuple[str, int]:
    """normalise + strip_boilerplate."""
    return strip_boilerplate(normalise(text), extra_patterns)
