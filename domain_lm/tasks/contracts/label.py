"""``LabelOutput``: the answer is one of a closed set of labels (classification, intents, routing)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from domain_lm.inference.schema_bounds import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING
from domain_lm.tasks.contracts.base import DecodeConstraint, Inputs, OutputContract, Problem, Rejection, Tokenizer
from domain_lm.tasks.contracts.negatives import contract_breaking
from domain_lm.tasks.errors import ContractError

_STRIP = " \t\r\n\"'`“”‘’「」『』"
_TRAIL = ".。!！"
#: Budget floor when the template gives none (a label is a few tokens; the floor costs nothing).
LABEL_MAX_TOKENS = 32
#: The answer of a task with ``abstain_below`` when no label is likely enough: for human review.
ABSTAIN = "abstain"


def norm_label(s: str) -> str:
    """How answers are compared with labels: case-folded, without quotes, spaces or a final full stop."""
    return s.strip(_STRIP).rstrip(_TRAIL).strip(_STRIP).casefold()


class LabelOutput(OutputContract):
    """The model answers the display string of one label (decoding is constrained to them).

    ``parse`` accepts the display string for the language, the canonical label or an alias,
    case-insensitively after stripping whitespace, quotes and a final full stop, and returns the
    canonical label. The token budget is never below what the longest display string needs.
    """

    kind: Literal["label"]
    labels: list[str] = Field(default_factory=list, description="Canonical labels (what evaluation and the API return).")
    display: dict[str, dict[str, str]] = Field(default_factory=dict, description="lang -> label -> display string.")
    aliases: dict[str, dict[str, list[str]]] = Field(default_factory=dict, description="lang -> label -> extra accepted strings.")
    abstain_below: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=f"Answer {ABSTAIN!r} (for human review) when the most likely label's calibrated probability is below this.",
    )

    # lang -> normalised answer -> canonical label; key None for languages without display/aliases
    _lookup: dict[str | None, dict[str, str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "LabelOutput":
        if len(self.labels) < 2:
            raise ValueError("a label output needs `labels` with at least two canonical labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("`labels` has duplicates")
        if self.abstain_below is not None and ABSTAIN in self.labels:
            raise ValueError(f"with abstain_below, {ABSTAIN!r} is the abstention answer and cannot be a label")
        for what, per_lang in (("display", self.display), ("aliases", self.aliases)):
            for lang, by_label in per_lang.items():
                unknown = set(by_label) - set(self.labels)
                if unknown:
                    raise ValueError(f"{what}[{lang}] names unknown labels {sorted(unknown)}")
        self._lookups()  # raises when two labels would read the same
        return self

    def _lookups(self) -> dict[str | None, dict[str, str]]:
        out: dict[str | None, dict[str, str]] = {}
        for lang in [None, *sorted(set(self.display) | set(self.aliases))]:
            lookup: dict[str, str] = {}
            shown = self.display.get(lang, {}) if lang else {}
            extra = self.aliases.get(lang, {}) if lang else {}
            for label in self.labels:
                for s in (shown.get(label, label), label, *extra.get(label, [])):
                    key = norm_label(s)
                    where = f"in {lang!r}" if lang else "(canonical labels)"
                    if not key:
                        raise ValueError(f"label {label!r} has an empty display/alias {where}")
                    if lookup.setdefault(key, label) != label:
                        raise ValueError(f"{s!r} would mean both {lookup[key]!r} and {label!r} {where}")
            out[lang] = lookup
        return out

    def _build(self) -> None:
        self._lookup = self._lookups()

    def check_languages(self, languages: Sequence[str]) -> list[Problem]:
        return [(("display", lang), f"display language {lang!r} is not in languages") for lang in self.display if lang not in languages]

    # ------------------------------------------------------------------ answers

    def parse(self, text: str, lang: str, inputs: Inputs = None) -> Any:
        label = self._lookup.get(lang, self._lookup[None]).get(norm_label(text))
        if label is None:
            raise ContractError(f"answer is not one of {self.choices(lang)}", raw=text)
        return label

    def target_text(self, value: Any, lang: str) -> str:
        if value not in self.labels:
            raise ContractError(f"{value!r} is not one of the labels {self.labels}", raw=repr(value))
        return self.display.get(lang, {}).get(value, value)

    def coerce(self, raw: Any) -> Any:
        """The canonical label, matched exactly or case-insensitively."""
        v = str(raw).strip()
        if v in self.labels:
            return v
        by_lower = {lab.lower(): lab for lab in self.labels}
        if v.lower() in by_lower:
            return by_lower[v.lower()]
        raise ContractError(f"label {raw!r} is not one of {self.labels}", raw=str(raw))

    # ------------------------------------------------------------------ decoding

    def choices(self, lang: str) -> list[str] | None:
        shown = self.display.get(lang, {})
        return [shown.get(label, label) for label in self.labels]

    def constraint(
        self, lang: str, inputs: Inputs = None, json_max_string: int = DEFAULT_MAX_STRING, json_max_items: int = DEFAULT_MAX_ITEMS
    ) -> DecodeConstraint:
        return DecodeConstraint(choices=self.choices(lang))

    def default_tokens(self, lang: str) -> int:
        # Room for the longest choice even at one byte per token (CJK labels are 3 bytes a character).
        return max(LABEL_MAX_TOKENS, 4 * max(len(c) for c in self.choices(lang) or [""]) + 8)

    def min_tokens(self, lang: str, tokenizer: Tokenizer | None = None) -> int:
        """The longest choice plus end-of-sequence: exact with ``tokenizer``, else an upper bound.

        Every token of a constrained answer spells at least one byte of the choice, so UTF-8 bytes
        bound the count for any byte-level or SentencePiece tokenizer (+1 for a leading-space piece,
        +1 for EOS).
        """
        options = self.choices(lang) or [""]
        if tokenizer is not None:
            return max(len(tokenizer.encode(c, add_special_tokens=False)) for c in options) + 1
        return max(len(c.encode("utf-8")) for c in options) + 2

    # ------------------------------------------------------------------ confidence and abstention

    def probabilities(
        self, choice_logprobs: Mapping[str, float], lang: str, temperature: float = 1.0, bias: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Label -> probability from each choice's log-likelihood (as an engine scores them for ``lang``):
        a softmax of the log-likelihoods divided by ``temperature``, plus each label's ``bias`` (1 and
        none: uncalibrated; both fitted on held-out answers calibrate them, see ``domain_lm.tasks.calibration``)."""
        by_choice = dict(zip(self.choices(lang) or [], self.labels))
        shift = bias or {}
        logits = {by_choice[c]: lp / temperature + shift.get(by_choice[c], 0.0) for c, lp in choice_logprobs.items() if c in by_choice}
        if not logits:
            return {}
        top = max(logits.values())
        weights = {label: math.exp(v - top) for label, v in logits.items()}
        total = sum(weights.values())
        return {label: w / total for label, w in weights.items()}

    def decide(self, probabilities: Mapping[str, float], threshold: float | None = None) -> tuple[str, str, float, bool]:
        """(answer, most likely label, its probability, abstained): the answer is ``ABSTAIN`` when the
        probability is below ``threshold`` (default: the contract's ``abstain_below``)."""
        label = max(self.labels, key=lambda lab: (probabilities.get(lab, 0.0), -self.labels.index(lab)))
        p = float(probabilities.get(label, 0.0))
        limit = self.abstain_below if threshold is None else threshold
        abstained = limit is not None and p < limit
        return (ABSTAIN if abstained else label), label, p, abstained

    # ------------------------------------------------------------------ schemas, pairs, metrics

    def value_schema(self) -> dict[str, Any]:
        extra = [ABSTAIN] if self.abstain_below is not None else []
        return {"type": "string", "enum": [*self.labels, *extra]}

    @property
    def classes(self) -> list[str] | None:
        return list(self.labels)

    def describe(self) -> str:
        return f"{self.kind} ({'/'.join(self.labels)})"

    def describe_answer(self, lang: str) -> str:
        return f"answer must be one of: {self.choices(lang)}"

    def rejected_answers(self, gold: Any, inputs: dict[str, Any], lang: str, rng: random.Random) -> list[Rejection]:
        """Another label (``wrong_label``) and an answer that is no label at all (``contract``)."""
        out: list[Rejection] = []
        wrong = [lab for lab in self.labels if lab != gold]
        if wrong:
            out.append(("wrong_label", self.target_text(rng.choice(wrong), lang)))
        broken = contract_breaking(self.parse, self.target_text(gold, lang), lang, rng)
        if broken is not None:
            out.append(("contract", broken))
        return out
