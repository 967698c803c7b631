"""Worse answers for reward pairs: numbers the source does not contain, answers that break a contract.

Pure helpers the output contracts use in ``rejected_answers``; every function takes its randomness
from the ``rng`` it is given, so the pairs built from a seed are reproducible.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

#: Answers a contract should refuse: prose instead of an answer, a hedged answer, a cut-off answer.
_BROKEN = {
    "en": ["I am not sure, it could be several things.", "Answer: {answer} (probably)", "{half}"],
    "zh": ["我不确定，可能有多种情况。", "答案：{answer}（大概）", "{half}"],
}


def numbers_in(text: str) -> set[str]:
    """Numbers written in ``text`` (thousands separators removed: 1,200 == 1200)."""
    return {m.replace(",", "") for m in _NUMBER.findall(text)}


def source_text(inputs: dict[str, Any]) -> str:
    """Every input value as one text (where a faithful answer may take its numbers from)."""
    return " ".join(str(v) for v in inputs.values())


def fresh_number(avoid: set[str], start: int) -> str:
    """A number, from ``start`` on, that is neither in ``avoid`` nor a substring of one of them."""
    n = start
    while str(n) in avoid or any(str(n) in a for a in avoid):
        n = n * 3 + 7
    return str(n)


def unfaithful_summary(summary: str, source: str, lang: str = "en", seed: int = 0) -> str:
    """A summary that quotes numbers absent from ``source``: every number in ``summary`` is
    replaced by a fresh one, or, when it has none, a fabricated figure is appended."""
    avoid = numbers_in(source) | numbers_in(summary)
    rng = random.Random(seed)
    found = list(_NUMBER.finditer(summary))
    if found:
        out, last = [], 0
        for m in found:
            out += [summary[last : m.start()], fresh_number(avoid, rng.randint(13, 97))]
            last = m.end()
        return "".join(out) + summary[last:]
    pct, amount = fresh_number(avoid, rng.randint(11, 89)), fresh_number(avoid, rng.randint(120, 980))
    extra = f"净利润增长{pct}%，达到{amount}亿元。" if lang == "zh" else f" Net profit rose {pct}% to {amount} million."
    return summary.rstrip() + extra


def with_numbers_changed(value: Any, avoid: set[str], rng: random.Random) -> Any:
    """A copy of a JSON value with every number replaced by one not in ``avoid``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return type(value)(fresh_number(avoid, rng.randint(13, 97)))
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return fresh_number(avoid, rng.randint(13, 97))
    if isinstance(value, dict):
        return {k: with_numbers_changed(v, avoid, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [with_numbers_changed(v, avoid, rng) for v in value]
    return value


def contract_breaking(parse: Callable[[str, str], Any], chosen: str, lang: str, rng: random.Random) -> str | None:
    """An answer that ``parse`` (a contract's) refuses: prose, a hedged answer, or a cut-off one."""
    options = [s.format(answer=chosen, half=chosen[: max(1, len(chosen) // 2)]) for s in _BROKEN.get(lang, _BROKEN["en"])]
    rng.shuffle(options)
    for text in options:
        if text != chosen and _breaks(parse, text, lang):
            return text
    return None


def _breaks(parse: Callable[[str, str], Any], text: str, lang: str) -> bool:
    try:
        parse(text, lang)
    except Exception:  # noqa: BLE001 - any parse failure is a broken contract for our purpose
        return True
    return False
