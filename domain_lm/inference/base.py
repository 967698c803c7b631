"""The engine interface every caller (service, eval, RLHF rollouts) depends on.

Two real implementations (``vllm_engine.VllmEngine``, ``hf_engine.HFEngine``) and a scripted fake
(``fake.FakeEngine``) share this contract; callers never import vLLM themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain_lm.errors import DomainLMError


class EngineError(DomainLMError):
    """The engine could not serve a request (unknown adapter, prompt too long, engine dead)."""


class GenerationRequest(BaseModel):
    """One generation. Give ``messages`` (chat, rendered with the model's chat template) or ``prompt``.

    ``choices`` restricts the answer to exactly one of the strings; ``json_schema`` to a JSON document
    valid under the schema; ``regex`` to a full match. Engines enforce these at decode time where
    they can.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    regex: str | None = Field(None, description="The whole answer must match this regular expression.")
    adapter: str | None = None
    stop: list[str] | None = None
    score_choices: bool = Field(
        False,
        description="With choices: score every choice (its tokens + end of sequence) and answer the most likely one; the "
        "result's choice_logprobs holds each choice's log-likelihood. Costs a prompt pass per token-trie node on vLLM.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> "GenerationRequest":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")
        if sum(x is not None for x in (self.choices, self.json_schema, self.regex)) > 1:
            raise ValueError("give at most one of choices, json_schema and regex")
        if self.score_choices and self.choices is None:
            raise ValueError("score_choices needs choices")
        return self


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "error"] | str = "stop"
    choice_logprobs: dict[str, float] | None = Field(None, description="Per-choice log-likelihood (requests with score_choices).")


@runtime_checkable
class Engine(Protocol):
    """What callers may rely on. ``generate`` is safe to call concurrently from any event loop."""

    model_name: str
    adapters: dict[str, str]

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def is_ready(self) -> bool: ...

    def close(self) -> None: ...


async def stream_results(engine: Engine, request: GenerationRequest) -> AsyncIterator[GenerationResult]:
    """Cumulative partial results while generating (engines with ``stream``), else the one final result."""
    stream = getattr(engine, "stream", None)
    if stream is None:
        yield await engine.generate(request)
        return
    async for result in stream(request):
        yield result


def add_adapter(engine: Engine, name: str, path: str) -> None:
    """Load a LoRA adapter into a running engine under ``name`` (blocking; call it off the event loop).

    Engines that load adapters at run time have ``add_adapter(name, path)``; requests in flight
    finish, later ones may name the adapter. ``EngineError`` when the engine cannot.
    """
    add = getattr(engine, "add_adapter", None)
    if add is None:
        raise EngineError(f"The {type(engine).__name__} engine cannot load adapters while serving; restart it with --adapter {name}=PATH.")
    add(name, path)


def choice_continuations(tokenizer: Any, request: GenerationRequest, eos_id: int) -> list[tuple[str, list[int]]]:
    """Each choice with the tokens it is scored on: its own tokens plus end of sequence (what ends a
    constrained answer), so a choice that is a prefix of another is not favoured."""
    return [(c, list(tokenizer(c, add_special_tokens=False)["input_ids"]) + [eos_id]) for c in request.choices or []]


def check_adapter(engine: Engine, adapter: str | None) -> None:
    if adapter is not None and adapter not in engine.adapters:
        known = ", ".join(sorted(engine.adapters)) or "none"
        raise EngineError(f"Unknown adapter {adapter!r}; this engine serves: {known}. Start the service with --adapter {adapter}=PATH.")


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    """The prompt text for a request: the model's chat template, or a plain transcript without one."""
    if request.prompt is not None:
        return request.prompt
    messages = list(request.messages or [])
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Base models without a chat template: a transcript the model can continue.
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """Prompt token ids. A chat-template rendering already holds its special tokens (BOS included
    where the model wants one), so only a raw ``prompt`` gets the tokenizer's specials added."""
    add_special = request.prompt is not None
    return list(tokenizer(render_prompt(tokenizer, request), add_special_tokens=add_special)["input_ids"])
