"""``JsonOutput``: the answer is a JSON document matching a JSON schema (extraction, entities, key points).

Fields marked ``x-grounded`` (``domain_lm.tasks.grounding``, docs/grounding.md) must copy their
value from a request input: the decode-time schema offers only the input's spans and numbers when
the per-request grammar is cheap enough (``specialise``), ``parse`` with the request's inputs
verifies them (``UngroundedError``), ``locate`` adds the spans' character offsets, and ``score``
counts the ungrounded spans of located answers.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jsonschema
from pydantic import Field, PrivateAttr, model_validator

from domain_lm.inference.schema_bounds import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING, bound_schema
from domain_lm.tasks import grounding
from domain_lm.tasks.contracts.base import DecodeConstraint, Inputs, OutputContract, Problem, Rejection
from domain_lm.tasks.contracts.negatives import contract_breaking, numbers_in, source_text, with_numbers_changed
from domain_lm.tasks.errors import ContractError

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
#: Metrics that compare the list inside a one-key object (``{"entities": [...]}``) rather than the object.
_LIST_METRICS = ("ner", "rouge")


class JsonOutput(OutputContract):
    """The answer may be wrapped in whitespace or a Markdown code fence; the JSON must parse
    completely and match ``schema``. The training target is compact JSON."""

    kind: Literal["json"]
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="JSON schema (draft 2020-12) of the answer.")

    default_max_tokens = 768

    _validator: Any = PrivateAttr(None)
    _grounded: bool = PrivateAttr(False)  # the schema has x-grounded fields

    @model_validator(mode="after")
    def _check(self) -> "JsonOutput":
        if self.schema_ is None:
            raise ValueError("a json output needs `schema` (a JSON schema)")
        try:
            jsonschema.Draft202012Validator.check_schema(self.schema_)
        except jsonschema.exceptions.SchemaError as e:
            raise ValueError(f"`schema` is not a valid JSON schema: {e.message}") from None
        try:
            grounding.grounded_fields(self.schema_)
        except grounding.GroundingError as e:
            raise ValueError(f"`schema`: {e}") from None
        return self

    def _build(self) -> None:
        self._validator = jsonschema.Draft202012Validator(self.schema_ or {})
        self._grounded = bool(grounding.grounded_fields(self.schema_ or {}))

    def check_inputs(self, inputs: Mapping[str, str]) -> list[Problem]:
        """A grounded field must name a declared ``string`` input."""
        try:
            fields = grounding.grounded_fields(self.schema_ or {}, set(inputs))
        except grounding.GroundingError as e:
            return [(("schema",), str(e))]
        return [
            (("schema",), f"{f.path}: {grounding.KEYWORD} input {f.grounding.input!r} is of type {inputs[f.grounding.input]}, not string")
            for f in fields
            if inputs[f.grounding.input] != "string"
        ]

    # ------------------------------------------------------------------ answers

    def parse(self, text: str, lang: str, inputs: Inputs = None) -> Any:
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1).strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError as e:
            raise ContractError(f"answer is not valid JSON ({e.msg} at char {e.pos})", raw=text) from None
        self._check_value(value, raw=text)
        if self._grounded and inputs is not None:
            grounding.require_grounded(value, self.schema_ or {}, dict(inputs), raw=text)
        return value

    def training_value(self, value: Any, inputs: Mapping[str, Any], lang: str) -> Any:
        """Grounded spans an enforced request could not write (evidence cut mid-clause) snapped to the
        shortest decode-time candidate that holds them (``grounding.decodable``)."""
        if not self._grounded:
            return value
        return grounding.decodable(value, self.schema_ or {}, dict(inputs), lang)

    def locate(self, value: Any, inputs: Inputs = None) -> Any:
        """The answer with the character offsets of its grounded spans (``grounding.locate``)."""
        if not self._grounded or inputs is None:
            return value
        return grounding.locate(value, self.schema_ or {}, dict(inputs))

    def target_text(self, value: Any, lang: str) -> str:
        """Compact JSON with object keys in schema order: the order constrained decoding writes them in."""
        self._check_value(value, raw=repr(value))
        return json.dumps(schema_ordered(value, self.schema_ or {}), ensure_ascii=False, separators=(",", ":"))

    def _check_value(self, value: Any, raw: str) -> None:
        err = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if err is not None:
            where = "/".join(map(str, err.absolute_path)) or "(root)"
            raise ContractError(f"JSON does not match the schema at {where}: {err.message}", raw=raw)

    def coerce(self, raw: Any) -> Any:
        """A JSON string is parsed; an object schema with one array property accepts a bare list; list
        items keep only the keys the item schema declares (datasets carry offsets the contract does not ask for)."""
        value = raw
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        schema = self.schema_ or {}
        props = schema.get("properties") or {}
        if isinstance(value, list) and schema.get("type") == "array":
            item_props = (schema.get("items") or {}).get("properties")
            if item_props:
                value = [{k: e[k] for k in item_props if k in e} if isinstance(e, dict) else e for e in value]
        elif isinstance(value, list) and len(props) == 1:
            ((name, spec),) = props.items()
            if spec.get("type") == "array":
                item_props = (spec.get("items") or {}).get("properties")
                if item_props:
                    value = [{k: e[k] for k in item_props if isinstance(e, dict) and k in e} for e in value]
                value = {name: value}
        self._check_value(value, raw=repr(raw)[:300])  # a gold answer the contract cannot train or score on
        return value

    # ------------------------------------------------------------------ decoding

    def constraint(
        self, lang: str, inputs: Inputs = None, json_max_string: int = DEFAULT_MAX_STRING, json_max_items: int = DEFAULT_MAX_ITEMS
    ) -> DecodeConstraint:
        """The schema with limits added where it has none, so a constrained answer always closes; with
        the request's ``inputs``, grounded fields restricted to the input's spans and numbers when the
        per-request grammar fits ``grounding.Budget`` (else the same schema for every request, and
        ``parse`` verifies the answer)."""
        schema = bound_schema(self.schema_ or {}, json_max_string, json_max_items)
        if self._grounded and inputs is not None:
            return DecodeConstraint(json_schema=grounding.specialise(schema, dict(inputs), lang).schema_)
        return DecodeConstraint(json_schema=grounding.strip(schema))

    # ------------------------------------------------------------------ schemas, pairs, metrics

    def json_schema(self) -> dict[str, Any] | None:
        return grounding.strip(self.schema_ or {})

    def value_schema(self) -> dict[str, Any]:
        """The answer as returned: the schema plus the offset keys ``locate`` adds (optional integers)."""
        return grounding.located_schema(self.schema_ or {})

    def describe_answer(self, lang: str) -> str:
        return f"answer must be JSON matching: {json.dumps(grounding.strip(self.schema_ or {}), ensure_ascii=False)}"

    def rejected_answers(self, gold: Any, inputs: dict[str, Any], lang: str, rng: random.Random) -> list[Rejection]:
        """Numbers the source does not hold (``unfaithful_numbers``), a list missing its last item
        (``incomplete``) and an answer that is not valid JSON for the schema (``contract``)."""
        chosen = self.target_text(gold, lang)
        out: list[Rejection] = []
        changed = with_numbers_changed(gold, numbers_in(source_text(inputs)) | numbers_in(chosen), rng)
        if changed != gold:
            out.append(("unfaithful_numbers", self.target_text(changed, lang)))
        if isinstance(gold, list) and gold:
            out.append(("incomplete", self.target_text(gold[:-1], lang)))
        broken = contract_breaking(self.parse, chosen, lang, rng)
        if broken is not None:
            out.append(("contract", broken))
        return out

    def score(self, metric: str, gold: Sequence[Any], pred: Sequence[Any | None], lang: str | None = None) -> dict[str, Any]:
        """The metric, plus for grounded schemas the counts of ``grounding.located_counts`` over the
        predictions (answers as ``locate`` returned them: a span without offsets is ungrounded)."""
        out = super().score(metric, gold, pred, lang)
        if self._grounded:
            out.update(grounding.located_counts(self.schema_ or {}, pred))
        return out

    def metric_value(self, value: Any, metric: str) -> Any:
        """Entity lists and key-point lists are compared without their one-key wrapper object."""
        if isinstance(value, dict) and len(value) == 1 and metric in _LIST_METRICS:
            (inner,) = value.values()
            if isinstance(inner, list):
                return inner
        return value


def schema_ordered(value: Any, schema: Any) -> Any:
    """``value`` with each object's keys in the order its schema declares them (others after, as they were)."""
    if not isinstance(schema, dict):
        return value
    branches = [b for key in ("anyOf", "oneOf", "allOf") for b in schema.get(key) or [] if isinstance(b, dict)]
    if isinstance(value, dict):
        node = next((b for b in [schema, *branches] if b.get("properties")), schema)
        props = node.get("properties") or {}
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: schema_ordered(value[k], props.get(k)) for k in keys}
    if isinstance(value, list):
        node = next((b for b in [schema, *branches] if isinstance(b.get("items"), dict)), schema)
        return [schema_ordered(v, node.get("items")) for v in value]
    return value
