"""``JsonOutput``: the answer is a JSON document matching a JSON schema (extraction, entities, key points)."""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any, Literal

import jsonschema
from pydantic import Field, PrivateAttr, model_validator

from domain_lm.inference.schema_bounds import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING, bound_schema
from domain_lm.tasks.contracts.base import DecodeConstraint, Inputs, OutputContract, Rejection
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

    @model_validator(mode="after")
    def _check(self) -> "JsonOutput":
        if self.schema_ is None:
            raise ValueError("a json output needs `schema` (a JSON schema)")
        try:
            jsonschema.Draft202012Validator.check_schema(self.schema_)
        except jsonschema.exceptions.SchemaError as e:
            raise ValueError(f"`schema` is not a valid JSON schema: {e.message}") from None
        return self

    def _build(self) -> None:
        self._validator = jsonschema.Draft202012Validator(self.schema_ or {})

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
        return value

    def target_text(self, value: Any, lang: str) -> str:
        self._check_value(value, raw=repr(value))
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

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
        return value

    # ------------------------------------------------------------------ decoding

    def constraint(
        self, lang: str, inputs: Inputs = None, json_max_string: int = DEFAULT_MAX_STRING, json_max_items: int = DEFAULT_MAX_ITEMS
    ) -> DecodeConstraint:
        """The schema with limits added where it has none, so a constrained answer always closes."""
        return DecodeConstraint(json_schema=bound_schema(self.schema_ or {}, json_max_string, json_max_items))

    # ------------------------------------------------------------------ schemas, pairs, metrics

    def json_schema(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.schema_)

    def value_schema(self) -> dict[str, Any]:
        return copy.deepcopy(self.schema_) or {}

    def describe_answer(self, lang: str) -> str:
        return f"answer must be JSON matching: {json.dumps(self.schema_, ensure_ascii=False)}"

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

    def metric_value(self, value: Any, metric: str) -> Any:
        """Entity lists and key-point lists are compared without their one-key wrapper object."""
        if isinstance(value, dict) and len(value) == 1 and metric in _LIST_METRICS:
            (inner,) = value.values()
            if isinstance(inner, list):
                return inner
        return value
