"""PII detection: the single place that finds card, account and ID numbers, phones and e-mails.

``scrub(text)`` replaces each hit by a typed placeholder (``<CARD_NUMBER>``, ``<ACCOUNT_NUMBER>``,
``<ID_NUMBER>``, ``<PHONE>``, ``<EMAIL>``) and counts hits by type; ``mask(text)`` is the same
without the counts (logs, audit lines, error bodies); ``mask_value(obj)`` masks a JSON-like value,
dict keys and integers included.

How it stays linear and precise:

* Detection runs on a same-length normalised copy of the text (full-width digits and letters,
  no-break and ideographic spaces, unicode dashes mapped to ASCII), so ``１１０１…``, NBSP- or
  dot-grouped card numbers look like any other; replacements are made on the original text.
* Three regular expressions find candidates, each anchored on the left (a candidate can only
  start where a token starts) and made of bounded or unambiguous repetitions, so no input makes
  them backtrack more than a constant per character: e-mails, IBAN-shaped tokens and "digit
  runs" (digits joined by up to three separators among space . - / ( )).
* Each digit run is then classified by checksums where identifiers have one (Luhn for cards,
  the GB 11643 check digit for 18-digit Chinese IDs, mod-97 for IBANs, via ``python-stdnum``),
  by shape where they do not (15-digit Chinese IDs with a valid birth date, SSNs, phone
  numbers), and by a keyword just before it ("acct is 1234567", "账号：…", "身份证 …"). Amounts
  ("1,234,567.89"), dates, years and numbers that fail their checksum are left alone.
"""

from __future__ import annotations

import bisect
import datetime
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from stdnum import iban, luhn
from stdnum.cn import ric

CARD, ACCOUNT, ID, PHONE, EMAIL = "CARD_NUMBER", "ACCOUNT_NUMBER", "ID_NUMBER", "PHONE", "EMAIL"

#: Longest text ``mask_value`` masks per string (logs are bounded; the rest is cut, never kept unmasked).
MAX_FIELD_CHARS = 8192
#: Deepest nesting ``mask_value`` walks; deeper values are replaced (a hostile body can nest deeply).
MAX_DEPTH = 32


def _normaliser() -> dict[int, str]:
    """A 1:1 character map (so offsets stay valid) from look-alikes to ASCII."""
    table: dict[int, str] = {}
    for i in range(10):
        table[0xFF10 + i] = str(i)  # full-width digits
    for i in range(26):
        table[0xFF21 + i] = chr(ord("A") + i)
        table[0xFF41 + i] = chr(ord("a") + i)
    for cp in (0x00A0, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x202F, 0x205F, 0x3000):
        table[cp] = " "  # no-break, thin, figure and ideographic spaces
    for cp in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF):
        table[cp] = " "  # zero-width characters hidden inside a number
    for cp in (0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2212, 0xFE63, 0xFF0D):
        table[cp] = "-"
    table.update({0xFF0E: ".", 0xFF0F: "/", 0xFF20: "@", 0xFF0B: "+", 0xFF08: "(", 0xFF09: ")", 0xFF1A: ":", 0xFF03: "#"})
    return table


_NORMALISE = _normaliser()

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# Two letters, two check digits, then up to 30 alphanumerics in optional groups; mod-97 decides.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")
# Digits joined by short separator runs, at least six digits, an optional trailing X (Chinese IDs).
_RUN = re.compile(r"(?<![A-Za-z0-9])\+?\(?\d(?:[ .\-/()]{0,3}\d){5,}(?:[Xx](?![A-Za-z0-9]))?")
_SEPS = re.compile(r"[ .\-/()]+")
# A keyword right before a number says what it is, whatever its checksum ("acct is 12345678").
# The look-ahead on first letters lets the engine skip most positions at C speed.
_KEYWORD = re.compile(
    r"(?i)(?=[cipsa卡银身证账帐])(?:(?P<card>\bcard|卡号|银行卡)|(?P<id>\bid\b|\bpassport|\bssn\b|身份证|证件)|(?P<acct>\baccount|\bacct|\ba/c|账号|帐号|账户|帐户))"
)
#: How far (in characters without digits or line breaks) a keyword may stand before its number.
_KEYWORD_GAP = 12
_PHONE_SHAPES = [
    re.compile(r"\(?0\d{2,3}\)?[ -]?\d{7,8}"),  # CN landline: 010-65528888, (0755) 1234567
    re.compile(r"\(0\d{2,3}\) ?\d{3,4}[ -]?\d{4}"),  # (010) 6552 8888
    re.compile(r"\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}"),  # North America: (212) 555-0199, 212.555.0199
]
_SSN = re.compile(r"\d{3}-\d{2}-\d{4}")
_DECIMAL = re.compile(r"\d+\.\d+")
_THOUSANDS = re.compile(r"\d{1,3}(?:[ .]\d{3})+")


# --------------------------------------------------------------------------- classification


def _is_card(digits: str) -> bool:
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    if digits[0] == "2" and not 2221 <= int(digits[:4]) <= 2720:  # Mastercard 2-series only; not years
        return False
    # UnionPay (62) numbers of 16-19 digits do not all satisfy Luhn; the prefix and length are enough.
    return luhn.is_valid(digits) or (digits.startswith("62") and len(digits) >= 16)


def _birth_date_ok(yyyymmdd: str) -> bool:
    try:
        day = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return datetime.date(1880, 1, 1) <= day <= datetime.date.today()


def _is_cn_id(digits: str) -> bool:
    """18 digits (GB 11643 check digit, X allowed) or the older 15 (no check digit: date and region)."""
    if len(digits) == 18:
        return digits[0] in "12345678" and _birth_date_ok(digits[6:14]) and ric.calc_check_digit(digits) == digits[17]
    if len(digits) == 15 and digits.isdigit():
        return digits[0] in "12345678" and _birth_date_ok("19" + digits[6:12])
    return False


def _is_ssn(raw: str) -> bool:
    if not _SSN.fullmatch(raw):
        return False
    area, group, serial = raw.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _is_phone(raw: str, digits: str) -> bool:
    if raw.startswith("+"):
        return 8 <= len(digits) <= 15
    national = digits[2:] if digits.startswith("86") and len(digits) == 13 else digits
    if len(national) == 11 and national[0] == "1" and national[1] in "3456789":
        return True  # Chinese mobile, however it is grouped
    return any(p.fullmatch(raw) for p in _PHONE_SHAPES)


def _is_figure(raw: str) -> bool:
    """Amounts and lists of years: numbers, not identifiers."""
    if raw.isdigit():
        return False
    if _DECIMAL.fullmatch(raw) or _THOUSANDS.fullmatch(raw):
        return True
    groups = _SEPS.split(raw)
    return len(groups) > 1 and all(len(g) == 4 and 1900 <= int(g) <= 2099 for g in groups)


@dataclass(frozen=True)
class _Text:
    """The normalised text and where its keywords end (found in one pass, looked up by bisection)."""

    norm: str
    keyword_ends: list[int]
    keyword_kinds: list[str]

    @classmethod
    def of(cls, text: str) -> "_Text":
        norm = text.translate(_NORMALISE)
        found = [(m.end(), CARD if m.group("card") else ID if m.group("id") else ACCOUNT) for m in _KEYWORD.finditer(norm)]
        return cls(norm, [e for e, _ in found], [k for _, k in found])

    def keyword_before(self, start: int) -> str | None:
        i = bisect.bisect_right(self.keyword_ends, start) - 1
        if i < 0 or start - self.keyword_ends[i] > _KEYWORD_GAP:
            return None
        gap = self.norm[self.keyword_ends[i] : start]
        return None if any(ch.isdigit() or ch == "\n" for ch in gap) else self.keyword_kinds[i]


def _classify(raw: str, digits: str, text: _Text, start: int) -> str | None:
    """What a piece of a digit run is, or None when it is an ordinary number."""
    if "X" in digits:
        return ID if _is_cn_id(digits) else None
    n = len(digits)
    if n in (15, 18) and _is_cn_id(digits):
        return ID
    if n >= 13 and _is_card(digits):
        return CARD
    if n == 9 and _is_ssn(raw):
        return ID
    if _is_figure(raw):
        return None
    keyword = text.keyword_before(start)
    if keyword is not None:
        return keyword
    if n >= 8 and _is_phone(raw, digits):
        return PHONE
    return None


#: Identifiers span at most this many digit groups (a card in 4-4-4-4-3 is five, +86 138 1234 5678 four).
_MAX_GROUPS = 7
#: Longer runs (number tables) are read per space-separated part, so the work stays linear.
_MAX_RUN_GROUPS = 12
_GROUP = re.compile(r"\d+(?:[Xx](?![A-Za-z0-9]))?")


def _window(raw: str, offset: int, text: _Text) -> list[tuple[int, int, str]]:
    """Spans to mask among the digit groups of ``raw`` (which starts at ``offset`` in the text).

    From each group, the longest run of consecutive groups (at most 19 digits) that classifies as
    an identifier wins, so "2024-03-31 4111 1111 1111 1111" masks the card and keeps the date.
    """
    groups = [(m.start(), m.end(), m.group().upper()) for m in _GROUP.finditer(raw)]
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(groups):
        a = groups[i][0]
        while a > 0 and raw[a - 1] in "+(":  # a country code's "+" or an area code's "("
            a -= 1
        # Longest first: most runs are one identifier, found by the first check.
        last, size = i, len(groups[i][2])
        while last + 1 < min(len(groups), i + _MAX_GROUPS) and size + len(groups[last + 1][2]) <= 19:
            last += 1
            size += len(groups[last][2])
        for j in range(last, i - 1, -1):
            digits = "".join(g[2] for g in groups[i : j + 1])
            if len(digits) >= 6 and (kind := _classify(raw[a : groups[j][1]], digits, text, offset + a)) is not None:
                out.append((offset + a, offset + groups[j][1], kind))
                i = j
                break
        i += 1
    return out


def _runs(raw: str, start: int, text: _Text) -> list[tuple[int, int, str]]:
    """Spans to mask in one digit run (digits joined by separators)."""
    if len(_SEPS.findall(raw)) < _MAX_RUN_GROUPS:
        return _window(raw, start, text)
    out: list[tuple[int, int, str]] = []
    for part in re.finditer(r"[^ ]{6,}", raw):
        if len(_SEPS.findall(part.group())) < _MAX_RUN_GROUPS:
            out += _window(part.group(), start + part.start(), text)
    return out


def _iban_lengths() -> dict[str, int]:
    """Country code -> IBAN length, from python-stdnum's registry (so a candidate is checked once)."""
    lengths = {}
    for entry in iban._ibandb.prefixes:
        props = entry[3]
        if "bban" in props:
            lengths[entry[1]] = 4 + sum(int(x) for x in re.findall(r"(\d+)!?[nac]", props["bban"]))
    return lengths


_IBAN_LENGTHS = _iban_lengths()


def _iban_span(m: re.Match) -> tuple[int, int] | None:
    """The prefix of an IBAN-shaped candidate that is a valid IBAN of its country, if any."""
    text = m.group()
    want = _IBAN_LENGTHS.get(text[:2].upper())
    if want is None:
        return None
    count = 0
    for i, ch in enumerate(text):
        if ch != " ":
            count += 1
        if count == want:
            end = i + 1
            ok = (end == len(text) or text[end] == " ") and iban.is_valid(text[:end])
            return (m.start(), m.start() + end) if ok else None
    return None


def _free(spans: list[tuple[int, int, str]], a: int, b: int) -> bool:
    """True when [a, b) overlaps none of the sorted ``spans`` (binary search: linear overall)."""
    i = bisect.bisect_left(spans, (a,))
    return (i == len(spans) or spans[i][0] >= b) and (i == 0 or spans[i - 1][1] <= a)


# --------------------------------------------------------------------------- public API


def find(text: str) -> list[tuple[int, int, str]]:
    """Sorted, non-overlapping ``(start, end, kind)`` spans of PII in ``text``."""
    t = _Text.of(text)
    norm = t.norm
    emails = [(m.start(), m.end(), EMAIL) for m in _EMAIL.finditer(norm)]
    ibans = [(*got, ACCOUNT) for m in _IBAN.finditer(norm) if (got := _iban_span(m)) and _free(emails, *got)]
    spans = sorted(emails + ibans)
    found = list(spans)
    for m in _RUN.finditer(norm):
        if _free(spans, m.start(), m.end()):
            found += _runs(m.group(), m.start(), t)
    return sorted(found)


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """Replace PII with typed placeholders; returns the new text and hit counts by type."""
    spans = find(text)
    if not spans:
        return text, {}
    counts: Counter = Counter()
    parts, pos = [], 0
    for start, end, kind in spans:
        parts += [text[pos:start], f"<{kind}>"]
        counts[kind] += 1
        pos = end
    parts.append(text[pos:])
    return "".join(parts), dict(counts)


def mask(text: str, limit: int | None = None) -> str:
    """``scrub`` without the counts; with ``limit``, longer text is cut first (never mid-identifier)."""
    if limit is not None and len(text) > limit:
        text = _cut(text, limit)
    return scrub(text)[0]


_TOKEN_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .-/()+@_%\u00a0\u3000") | {
    chr(c) for c in range(0xFF10, 0xFF5B)
}


def _cut(text: str, limit: int) -> str:
    """``text[:limit]`` minus a trailing piece that could be half an identifier, plus a marker."""
    end = limit
    floor = max(0, limit - 64)  # the longest identifier with separators is well under 64 characters
    while end > floor and text[end - 1] in _TOKEN_CHARS:
        end -= 1
    return text[:end] + f"…[{len(text) - end} more characters]"


def mask_value(value: Any, limit: int = MAX_FIELD_CHARS, _depth: int = 0) -> Any:
    """Mask every string in a JSON-like value: dict keys, list items, and numbers (a card number
    sent as an integer is still a card number). Strings are cut at ``limit`` characters."""
    if _depth > MAX_DEPTH:
        return "<nested too deeply>"
    if isinstance(value, str):
        return mask(value, limit)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        text = str(value)
        masked = mask(text, limit)
        return value if masked == text else masked
    if isinstance(value, dict):
        return {mask_value(str(k), limit, _depth + 1): mask_value(v, limit, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v, limit, _depth + 1) for v in value]
    return value
