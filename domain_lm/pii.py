"""PII patterns: the single place that finds account/card numbers, national IDs, phones and e-mails.

``scrub(text)`` replaces each hit by a typed placeholder (``<CARD_NUMBER>``, ...) and counts hits by
type; ``mask(text)`` is the same without the counts (for logs and API responses).

Order matters: longer, more specific patterns run first so a Chinese ID number is not taken for a
phone number and a card number is not taken for an account number.
"""

from __future__ import annotations

import re
from collections import Counter

# Card numbers: 13-19 digits, optionally grouped by spaces or dashes (4-4-4-4 style), Luhn-checked.
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
# Chinese resident ID: 6-digit region, birth date 18xx/19xx/20xx, 3 digits, check digit or X.
_CN_ID = re.compile(r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\d)")
# US social security number.
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# IBAN (two letters, two check digits, up to 30 alphanumerics, optionally grouped by 4).
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# Account numbers introduced by a keyword ("account no. 12345678", "账号 6222...").
_ACCOUNT = re.compile(
    r"(?i)(?P<kw>(?:account|acct|a/c)(?:\s*(?:number|no\.?|#))?\s*[:#]?\s*|(?:账号|账户|帐号)\s*[:：]?\s*)(?P<num>\d[\d -]{5,22}\d)"
)
# Chinese mobile numbers: 1[3-9]x xxxx xxxx, optional +86.
_CN_MOBILE = re.compile(r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)")
# International / North-American phone numbers with separators.
_CN_LANDLINE = re.compile(r"(?<![\d-])0\d{2,3}-\d{7,8}(?!\d)")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?!\d)")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_sub(counts: Counter):
    def repl(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            counts["CARD_NUMBER"] += 1
            return "<CARD_NUMBER>"
        return m.group(0)

    return repl


def _simple_sub(kind: str, counts: Counter):
    def repl(m: re.Match) -> str:
        counts[kind] += 1
        return f"<{kind}>"

    return repl


def _account_sub(counts: Counter):
    def repl(m: re.Match) -> str:
        counts["ACCOUNT_NUMBER"] += 1
        return m.group("kw") + "<ACCOUNT_NUMBER>"

    return repl


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """Replace PII with typed placeholders; returns the new text and hit counts by type."""
    counts: Counter = Counter()
    text = _EMAIL.sub(_simple_sub("EMAIL", counts), text)
    text = _CN_ID.sub(_simple_sub("ID_NUMBER", counts), text)
    text = _SSN.sub(_simple_sub("ID_NUMBER", counts), text)
    text = _CARD.sub(_card_sub(counts), text)
    text = _IBAN.sub(_simple_sub("ACCOUNT_NUMBER", counts), text)
    text = _ACCOUNT.sub(_account_sub(counts), text)
    text = _CN_MOBILE.sub(_simple_sub("PHONE", counts), text)
    text = _CN_LANDLINE.sub(_simple_sub("PHONE", counts), text)
    text = _PHONE.sub(_simple_sub("PHONE", counts), text)
    return text, dict(counts)


def mask(text: str) -> str:
    """``scrub`` without the counts."""
    return scrub(text)[0]
