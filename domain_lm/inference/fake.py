"""A scripted engine for API tests: deterministic answers, optional delay, every request recorded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from domain_lm.inference.base import GenerationRequest, GenerationResult, check_adapter


def example_for_schema(schema: dict[str, Any]) -> Any:
    """A small value valid under common JSON schemas (objects, arrays, enums, scalars)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_for_schema(props.get(k, {})) for k in schema.get("required", list(props))}
    if kind == "array":
        n = max(1, schema.get("minItems", 1))
        return [example_for_schema(schema.get("items", {"type": "string"})) for _ in range(n)]
    if kind in ("number", "integer"):
        return max(schema.get("minimum", 1), 1) if "maximum" not in schema or schema["maximum"] >= 1 else schema["maximum"]
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "x" * max(1, schema.get("minLength", 1))


Script = Callable[[GenerationRequest], str]


class FakeEngine:
    """Answers without a model.

    ``script(request) -> text`` decides each answer; without one, label requests get the first
    choice, JSON requests a small schema-valid document, others ``default_text``. ``delay`` (s)
    simulates generation time; ``generate`` sleeps without blocking the event loop. Scored label
    requests give the answer log-likelihood 0 and every other choice ``-choice_margin``.
    """

    def __init__(
        self,
        model_name: str = "fake-model",
        adapters: dict[str, str] | None = None,
        script: Script | None = None,
        delay: float = 0.0,
        default_text: str = "A short answer.",
        ready: bool = True,
        choice_margin: float = 2.0,
    ):
        self.model_name = model_name
        self.adapters = dict(adapters or {})
        self.script = script
        self.delay = delay
        self.default_text = default_text
        self.ready = ready
        self.choice_margin = choice_margin
        self.add_adapter_error: Exception | None = None
        self.requests: list[GenerationRequest] = []
        self.closed = False

    def _answer(self, request: GenerationRequest) -> GenerationResult:
        check_adapter(self, request.adapter)
        self.requests.append(request)
        if self.script is not None:
            text = self.script(request)
        elif request.choices is not None:
            text = request.choices[0]
        elif request.json_schema is not None:
            text = json.dumps(example_for_schema(request.json_schema), ensure_ascii=False, separators=(",", ":"))
        else:
            text = self.default_text
        prompt = request.prompt or " ".join(m["content"] for m in request.messages or [])
        scores = None
        if request.score_choices and request.choices:
            # The scripted answer is the most likely choice; the others trail by ``choice_margin`` nats.
            scores = {c: 0.0 if c == text else -self.choice_margin for c in request.choices}
        return GenerationResult(
            text=text,
            prompt_tokens=len(prompt.split()),
            completion_tokens=max(1, len(text.split())),
            finish_reason="stop",
            choice_logprobs=scores,
        )

    def add_adapter(self, name: str, path: str) -> None:
        """Serve ``name`` from now on (``add_adapter_error`` makes it fail, as a broken adapter would)."""
        if self.add_adapter_error is not None:
            raise self.add_adapter_error
        self.adapters[name] = str(path)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._answer(request)

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.delay:
            time.sleep(self.delay)
        return [self._answer(r) for r in requests]

    def is_ready(self) -> bool:
        return self.ready and not self.closed

    def close(self) -> None:
        self.closed = True
