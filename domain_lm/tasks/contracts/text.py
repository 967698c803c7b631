"""``TextOutput``: the answer is free text of bounded length (summaries, explanations)."""

from __future__ import annotations

import json
import random
from typing import Any, Literal

from pydantic import Field, model_validator

from domain_lm.inference.schema_bounds import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING, NON_BLANK_TEXT
from domain_lm.tasks.contracts.base import DecodeConstraint, Inputs, OutputContract, Rejection
from domain_lm.tasks.contracts.negatives import source_text, unfaithful_summary
from domain_lm.tasks.errors import ContractError


class TextOutput(OutputContract):
    """Non-empty after stripping, at most ``max_length`` characters.

    The decoder is held to a non-blank first character and ``max_tokens``; ``parse`` cuts a longer
    answer to ``max_length`` (at a word end in its last fifth when there is one), which is what a
    length in the grammar did, without the seconds that grammar takes to compile on a large
    vocabulary (``schema_bounds.NON_BLANK_TEXT``). Training targets over ``max_length`` are refused.
    A line that repeats an earlier one (or starts one again and is cut off) is dropped from an answer
    (``drop_repeated_lines``): a small model's summary can loop on its best line until ``max_tokens``.
    """

    kind: Literal["text"]
    max_length: int | None = Field(None, ge=1, description="Maximum characters of the answer.")

    default_max_tokens = 512

    @model_validator(mode="after")
    def _check(self) -> "TextOutput":
        if self.max_length is None:
            raise ValueError("a text output needs `max_length`")
        return self

    def parse(self, text: str, lang: str, inputs: Inputs = None) -> Any:
        value = drop_repeated_lines(text.strip())
        if self.max_length is not None and len(value) > self.max_length:
            value = clip_text(value, self.max_length)
        self._check_value(value, raw=text)
        return value

    def target_text(self, value: Any, lang: str) -> str:
        if not isinstance(value, str):
            raise ContractError(f"a text output must be a string, got {type(value).__name__}", raw=repr(value))
        self._check_value(value.strip(), raw=value)
        return value.strip()

    def _check_value(self, value: str, raw: str) -> None:
        if not value:
            raise ContractError("answer is empty", raw=raw)
        if self.max_length is not None and len(value) > self.max_length:
            raise ContractError(f"answer is {len(value)} characters; the maximum is {self.max_length}", raw=raw)

    def coerce(self, raw: Any) -> Any:
        """Strings stay; numbers become their text; anything else its JSON."""
        if isinstance(raw, str):
            return raw
        return str(raw) if isinstance(raw, (int, float)) else json.dumps(raw, ensure_ascii=False)

    def constraint(
        self, lang: str, inputs: Inputs = None, json_max_string: int = DEFAULT_MAX_STRING, json_max_items: int = DEFAULT_MAX_ITEMS
    ) -> DecodeConstraint:
        return DecodeConstraint(regex=NON_BLANK_TEXT)

    def value_schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_length}

    def describe_answer(self, lang: str) -> str:
        return f"answer: text, at most {self.max_length} characters"

    def rejected_answers(self, gold: Any, inputs: dict[str, Any], lang: str, rng: random.Random) -> list[Rejection]:
        """The gold text with numbers the source does not hold (``unfaithful_numbers``)."""
        chosen = self.target_text(gold, lang)
        return [("unfaithful_numbers", unfaithful_summary(chosen, source_text(inputs), lang, seed=rng.randint(0, 10**6)))]


def drop_repeated_lines(text: str) -> str:
    """``text`` without the lines that repeat an earlier line (case and spacing aside), nor a last line
    that only begins an earlier one again (where ``max_tokens`` cut a loop off)."""
    lines = text.split("\n")
    seen: set[str] = set()
    kept: list[str] = []
    for i, line in enumerate(lines):
        key = " ".join(line.lower().split())
        if key and (key in seen or (i == len(lines) - 1 and any(s.startswith(key) for s in seen))):
            continue
        seen.add(key)
        kept.append(line)
    return "\n".join(kept).strip()


def clip_text(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters: at the last blank in the final fifth of the
    allowance when there is one (a whole word), else exactly there (Chinese has no blanks)."""
    cut = text[:max_chars]
    blank = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:blank] if blank >= max_chars * 4 // 5 else cut).rstrip()
