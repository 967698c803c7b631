"""The template file format as pydantic models (the YAML schema of ``task_templates/*.yaml``).

Only shape checks live here; checks that need the whole template (prompts for every language,
examples that satisfy the contract, Jinja that compiles) are in ``template.py`` so they can
report file and line.
"""

from __future__ import annotations

from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
LANG_PATTERN = r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$"

InputType = Literal["string", "integer", "number", "boolean", "list"]
OutputKind = Literal["label", "json", "text"]
#: Metric families that ``domain_lm.eval.metrics.score`` understands.
Metric = Literal["classification", "ner", "extraction", "exact_match", "numeric", "rouge"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InputField(Spec):
    type: InputType = "string"
    description: str = ""
    required: bool = True
    max_length: int | None = Field(None, ge=1, description="Characters for a string, items for a list.")
    default: Any = None


class OutputSpec(Spec):
    kind: OutputKind
    labels: list[str] | None = Field(None, description="Canonical labels (label tasks).")
    display: dict[str, dict[str, str]] = Field(default_factory=dict, description="lang -> label -> display string.")
    aliases: dict[str, dict[str, list[str]]] = Field(default_factory=dict, description="lang -> label -> extra accepted strings.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="JSON schema (json tasks).")
    max_length: int | None = Field(None, ge=1, description="Maximum characters (text tasks).")
    max_tokens: int | None = Field(None, ge=1, description="Generation budget hint for engines.")

    @model_validator(mode="after")
    def _check_kind(self) -> "OutputSpec":
        if self.kind == "label":
            if not self.labels or len(self.labels) < 2:
                raise ValueError("a label output needs `labels` with at least two canonical labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("`labels` has duplicates")
            for lang, shown in self.display.items():
                unknown = set(shown) - set(self.labels)
                if unknown:
                    raise ValueError(f"display[{lang}] names unknown labels {sorted(unknown)}")
            for lang, extra in self.aliases.items():
                unknown = set(extra) - set(self.labels)
                if unknown:
                    raise ValueError(f"aliases[{lang}] names unknown labels {sorted(unknown)}")
        elif self.labels or self.display or self.aliases:
            raise ValueError(f"`labels`/`display`/`aliases` only apply to label outputs, not {self.kind!r}")
        if self.kind == "json":
            if self.schema_ is None:
                raise ValueError("a json output needs `schema` (a JSON schema)")
            try:
                Draft202012Validator.check_schema(self.schema_)
            except SchemaError as e:
                raise ValueError(f"`schema` is not a valid JSON schema: {e.message}") from None
        elif self.schema_ is not None:
            raise ValueError(f"`schema` only applies to json outputs, not {self.kind!r}")
        if self.kind == "text" and self.max_length is None:
            raise ValueError("a text output needs `max_length`")
        return self


class PromptSpec(Spec):
    system: str = Field("", description="Jinja2 system message (may be empty).")
    variants: list[str] = Field(min_length=1, description="Jinja2 user-message phrasings; SFT samples among them.")


class Example(Spec):
    lang: str = Field(pattern=LANG_PATTERN)
    inputs: dict[str, Any]
    output: Any
    few_shot: bool = Field(True, description="May be shown as a few-shot turn.")

    @property
    def input(self) -> dict[str, Any]:
        """Alias of ``inputs`` (some callers say ``example.input``)."""
        return self.inputs


class TemplateSpec(Spec):
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str = Field(min_length=1)
    languages: list[str] = Field(min_length=1)
    metric: Metric
    adapter: str | None = None
    inputs: dict[str, InputField] = Field(min_length=1)
    output: OutputSpec
    prompts: dict[str, PromptSpec]
    examples: list[Example] = Field(default_factory=list)
