"""``OutputContract``: the base class of the output kinds (label, json, text, ...).

A contract is the ``output:`` section of a template, validated into the class of its ``kind``, and it
owns everything that depends on that kind: parsing a model answer into a typed value, the target
text for a typed value, the decode-time constraint and token budget for the engine, the JSON schema
of the value, shaping a dataset's raw gold value, rejected answers for reward pairs, and what the
task metric compares. Callers (``TaskTemplate``, ``TaskRunner``, the data builders, the eval harness)
call these methods and never switch on ``kind``. Adding a kind is one module with a subclass plus
one line in ``CONTRACTS`` (``domain_lm/tasks/contracts/__init__.py``); see docs/templates.md.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from domain_lm.inference.schema_bounds import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING
from domain_lm.tasks import metrics

#: A rejected answer for a reward pair: (why it is worse, e.g. "wrong_label", the answer text).
Rejection = tuple[str, str]
#: A problem found in the ``output`` section: (key path below ``output``, message).
Problem = tuple[tuple[Any, ...], str]
#: The request's validated inputs, for kinds whose answer depends on them (spans copied from the text).
Inputs = Mapping[str, Any] | None


class Tokenizer(Protocol):
    """What ``min_tokens`` needs of a tokenizer (any Hugging Face tokenizer has it)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class DecodeConstraint(BaseModel):
    """What an engine constrains decoding to: at most one of choices, a JSON schema, a regex."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    regex: str | None = None

    def request_fields(self) -> dict[str, Any]:
        """The ``GenerationRequest`` fields this constraint sets."""
        return self.model_dump(exclude_none=True)


class OutputContract(BaseModel, ABC):
    """One output kind. Frozen; derived state (lookups, validators) is rebuilt by ``_build``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: str
    max_tokens: int | None = Field(None, ge=1, description="Generation budget hint for engines.")

    #: The budget when the template gives no ``max_tokens`` (``default_tokens`` may refine it).
    default_max_tokens: ClassVar[int] = 512

    # ------------------------------------------------------------------ derived state

    def model_post_init(self, context: Any) -> None:
        self._build()

    def _build(self) -> None:
        """Fill private derived state; called after validation and after unpickling."""

    def __getstate__(self) -> dict[str, Any]:
        # Derived state may hold objects that do not pickle (schema validators); it is rebuilt.
        state = super().__getstate__()
        return {**state, "__pydantic_private__": None if state.get("__pydantic_private__") is None else {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._build()

    # ------------------------------------------------------------------ checks against the template

    def check_languages(self, languages: Sequence[str]) -> list[Problem]:
        """Problems with the template's languages (e.g. a display language the task does not have)."""
        return []

    def check_inputs(self, inputs: Mapping[str, str]) -> list[Problem]:
        """Problems with what the contract needs of the template's inputs (name -> input type),
        e.g. an answer grounded in an input the task does not declare."""
        return []

    # ------------------------------------------------------------------ answers

    @abstractmethod
    def parse(self, text: str, lang: str, inputs: Inputs = None) -> Any:
        """The typed value of a model answer, or ``ContractError`` (with ``.raw``) if it breaks the contract.

        ``inputs`` are the request's inputs, for kinds that check the answer against them.
        """

    @abstractmethod
    def target_text(self, value: Any, lang: str) -> str:
        """The exact assistant answer for a typed value (SFT targets, few-shot turns); ``ContractError`` if invalid."""

    def coerce(self, raw: Any) -> Any:
        """A dataset's raw gold value shaped into this kind's typed value (``ContractError`` if it cannot be)."""
        return raw

    def training_value(self, value: Any, inputs: Mapping[str, Any], lang: str) -> Any:
        """The gold ``value`` as the model should learn to write it for ``inputs`` (SFT targets): an
        answer the decode-time constraint admits; ``value`` itself by default."""
        return value

    def locate(self, value: Any, inputs: Inputs = None) -> Any:
        """The answer as the service returns it: ``value`` plus what is computed from the request's
        ``inputs`` after decoding (character offsets of spans copied from them); the value itself by default."""
        return value

    # ------------------------------------------------------------------ decoding

    @abstractmethod
    def constraint(
        self, lang: str, inputs: Inputs = None, json_max_string: int = DEFAULT_MAX_STRING, json_max_items: int = DEFAULT_MAX_ITEMS
    ) -> DecodeConstraint:
        """The decode-time constraint for ``lang`` (and ``inputs``, for kinds grounded in them);
        unbounded strings / arrays of a JSON schema get the ``json_max_*`` limits."""

    def default_tokens(self, lang: str) -> int:
        return self.default_max_tokens

    def min_tokens(self, lang: str, tokenizer: Tokenizer | None = None) -> int:
        """Tokens the longest valid answer may need (a budget below it can cut a valid answer off)."""
        return 1

    def token_budget(self, lang: str, override: int | None = None) -> int:
        """The generation budget: ``override`` (a runner setting), else the template's hint, else the
        kind's default; never below ``min_tokens`` (a too-small hint must not break the contract)."""
        return max(override or self.max_tokens or self.default_tokens(lang), self.min_tokens(lang))

    def budget_warning(self, lang: str, tokenizer: Tokenizer | None = None) -> str | None:
        """Why the template's ``max_tokens`` is too small for ``lang``, or None when it is enough."""
        need = self.min_tokens(lang, tokenizer)
        if self.max_tokens is None or self.max_tokens >= need:
            return None
        how = "with this tokenizer" if tokenizer is not None else "at most (UTF-8 bytes + 2; give a tokenizer for the exact count)"
        return f"output.max_tokens {self.max_tokens} is below the {need} tokens the longest {lang!r} answer needs {how}; {need} is used"

    # ------------------------------------------------------------------ schemas and description

    @abstractmethod
    def value_schema(self) -> dict[str, Any]:
        """JSON schema of the typed value (API docs)."""

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer text itself must match, for kinds whose answer is JSON."""
        return None

    def choices(self, lang: str) -> list[str] | None:
        """The exact strings an answer must be one of, for kinds with a closed answer set."""
        return None

    @property
    def classes(self) -> list[str] | None:
        """The closed set of typed values (canonical labels), or None for open answers."""
        return None

    def describe(self) -> str:
        """One line for listings (``domain-lm tasks list``)."""
        return self.kind

    @abstractmethod
    def describe_answer(self, lang: str) -> str:
        """What a valid answer looks like, for people (``domain-lm tasks render``)."""

    # ------------------------------------------------------------------ reward pairs

    def rejected_answers(self, gold: Any, inputs: dict[str, Any], lang: str, rng: random.Random) -> list[Rejection]:
        """Answers worse than the gold one, each with the reason (no answer is the default)."""
        return []

    # ------------------------------------------------------------------ metrics

    def metric_value(self, value: Any, metric: str) -> Any:
        """The part of a typed value that ``metric`` compares."""
        return value

    def score(self, metric: str, gold: Sequence[Any], pred: Sequence[Any | None], lang: str | None = None) -> dict[str, Any]:
        """Score predictions (None: the answer broke the contract, counted as wrong) with ``metric``."""
        g = [self.metric_value(v, metric) for v in gold]
        p = [None if v is None else self.metric_value(v, metric) for v in pred]
        return metrics.score(metric, g, p, labels=self.classes, lang=lang)
