"""Request and response models of the task endpoints (the OpenAI ones live in ``services.openai.schemas``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from domain_lm.inference.tasks import Usage


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(description="The task's input fields (see GET /v1/tasks/{name}).")
    lang: str = Field("en", max_length=16)
    version: int | None = Field(None, ge=1, description="A template version; default: the current one.")
    adapter: str | None = Field(None, max_length=128, description="LoRA adapter; default: the task's own, else the base model.")
    confidence: bool | None = Field(
        None,
        description="Label tasks: true scores every label and returns the answer's probability; default: only when the task "
        "needs it (an abstain threshold or a calibrated adapter) or the service is set to always.",
    )


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[dict[str, Any]] = Field(min_length=1)
    lang: str = Field("en", max_length=16)
    version: int | None = Field(None, ge=1)
    adapter: str | None = Field(None, max_length=128)
    confidence: bool | None = Field(
        None,
        description="Label tasks: true scores every label and returns the answer's probability; default: only when the task "
        "needs it (an abstain threshold or a calibrated adapter) or the service is set to always.",
    )


class TaskResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    task: str
    version: int
    lang: str
    output: Any = Field(description="The typed answer: a label, a JSON value or a text, per the task's contract.")
    raw_text: str
    model: str
    adapter: str | None
    usage: Usage
    latency_ms: float
    engine: str = Field("llm", description="What produced the answer: llm (the served model) or classical (TF-IDF + logistic regression).")
    confidence: float | None = Field(
        None, description="Label tasks: the probability of the most likely label (calibrated on held-out examples when `calibrated`)."
    )
    calibrated: bool | None = Field(None, description="Label tasks: the probability was calibrated on the task's held-out examples.")
    top_label: str | None = Field(None, description="Label tasks: the most likely label (the answer, unless it abstained).")
    abstained: bool = Field(False, description="The confidence was below the task's abstain_below: output is \"abstain\" (human review).")
    few_shot: int = Field(0, description="Retrieved examples shown in the prompt.")


class BatchItemError(BaseModel):
    error: str
    message: str
    raw_text: str | None = None


class BatchItem(BaseModel):
    index: int
    result: TaskResponse | None = None
    error: BatchItemError | None = None


class BatchResponse(BaseModel):
    task: str
    version: int
    items: list[BatchItem]
    usage: Usage
    latency_ms: float


class TaskSummary(BaseModel):
    name: str
    version: int
    versions: list[int]
    description: str
    languages: list[str]
    output_kind: str
    metric: str
    adapter: str | None = None
    engine: str = Field("auto", description="The template's engine option (auto, llm, base, classical).")
    serving: dict[str, Any] | None = Field(None, description="What answers the task now, and why (engine, system, adapter, why).")


class TaskDetail(TaskSummary):
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    choices: dict[str, list[str]] | None = Field(None, description="Label tasks: the answer strings per language.")


class TaskRegistered(BaseModel):
    name: str
    version: int
    versions: list[int]
    persisted: bool


class ExamplesAccepted(BaseModel):
    """An upload was checked and its teaching job queued: follow it at ``/v1/jobs/{job}``."""

    task: str
    job: str
    status_url: str
    examples: int
    train: int
    held_out: int
    duplicates: int
    skipped: int = Field(0, description="Invalid rows left out (only with skip_invalid=true).")
    adapter: bool
