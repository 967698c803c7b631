"""The template file format as pydantic models (the YAML schema of ``task_templates/*.yaml``).

Only shape checks live here (the ``output`` section is validated by the contract class of its
``kind``, ``domain_lm.tasks.contracts``); checks that need the whole template (prompts for every language,
examples that satisfy the contract, Jinja that compiles) are in ``template.py`` so they can
report file and line.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain_lm.tasks.contracts import AnyContract

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
LANG_PATTERN = r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$"

InputType = Literal["string", "integer", "number", "boolean", "list"]
#: Metric families that ``domain_lm.tasks.metrics.score`` understands.
Metric = Literal["classification", "ner", "extraction", "exact_match", "numeric", "rouge"]
#: What answers a task (docs/templates.md, "Teaching a task"): ``llm`` the served model with the
#: task's adapter when it has one; ``base`` the served model without any adapter (zero-shot, or
#: few-shot with ``few_shot``); ``classical`` the TF-IDF + logistic regression model fitted on the
#: task's uploaded examples; ``auto`` the classical model when it scored at least as well as the LLM
#: on their held-out split, else ``llm``.
EngineChoice = Literal["auto", "llm", "base", "classical"]
#: Most retrieved examples a prompt may carry (prompt length and cost grow with each).
MAX_FEW_SHOT = 16


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InputField(Spec):
    type: InputType = "string"
    description: str = ""
    required: bool = True
    max_length: int | None = Field(None, ge=1, description="Characters for a string, items for a list.")
    default: Any = None


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


class FewShotSpec(Spec):
    """Few-shot from the task's own labelled examples: the ``k`` most similar ones (TF-IDF cosine over
    their inputs) go into the prompt as example turns, when the base model answers (no adapter)."""

    k: int = Field(4, ge=1, le=MAX_FEW_SHOT, description="Examples per prompt.")
    max_chars: int = Field(2000, ge=50, le=20_000, description="Longest example input (characters) that may be shown.")


class TemplateSpec(Spec):
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str = Field(min_length=1)
    languages: list[str] = Field(min_length=1)
    metric: Metric
    adapter: str | None = None
    engine: EngineChoice = Field("auto", description="What answers the task (see EngineChoice).")
    few_shot: FewShotSpec | None = Field(None, description="Retrieved few-shot examples for base-model answers.")
    inputs: dict[str, InputField] = Field(min_length=1)
    output: AnyContract
    prompts: dict[str, PromptSpec]
    examples: list[Example] = Field(default_factory=list)

    @model_validator(mode="after")
    def _classical_needs_labels(self) -> "TemplateSpec":
        if self.engine == "classical" and self.output.classes is None:
            raise ValueError(f"engine: classical answers label tasks only; this task's output is {self.output.kind}")
        return self
