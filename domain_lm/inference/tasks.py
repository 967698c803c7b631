"""Run a task template on an engine: render -> constrained generate -> parse and validate.

Every answer returned satisfies the template's output contract; otherwise ``ContractError``
(carrying the raw model text) is raised. Used by the service, eval and RLHF alike.

Grounded answers (``x-grounded`` fields, docs/grounding.md): the decode-time schema offers only
the request input's spans and numbers when the per-request grammar is cheap enough (the contract's
``constraint`` with the inputs); otherwise, or if a value still is not in the input, the answer is
verified after decoding and regenerated once by sampling (``resample``), and a second ungrounded
answer raises ``UngroundedError`` (a ``ContractError``, carrying the answer). Answers carry the
character offsets of their grounded spans (the contract's ``locate``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from domain_lm.inference.base import Engine, GenerationRequest, GenerationResult
from domain_lm.inference.schema_bounds import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING, fit_schema
from domain_lm.tasks import ContractError, TaskTemplate
from domain_lm.tasks.grounding import UngroundedError

log = logging.getLogger(__name__)

#: Sampling temperature of the one retry an ungrounded answer gets (greedy would repeat it).
RESAMPLE_TEMPERATURE = 0.7


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TaskAnswer(BaseModel):
    """A contract-satisfying answer: the typed ``output`` and how it was produced."""

    model_config = ConfigDict(protected_namespaces=())

    task: str
    version: int
    lang: str
    output: Any
    raw_text: str
    model: str
    adapter: str | None
    usage: Usage
    latency_ms: float
    finish_reason: str = "stop"


class TaskRunner:
    """Turns (template, inputs) into engine requests and engine results into typed answers.

    The template's output contract gives the decode-time constraint and the token budget.
    ``json_max_string`` / ``json_max_items`` bound unbounded strings and arrays of a JSON schema at
    decode time (see ``schema_bounds``) so a JSON answer always closes inside its token budget;
    ``max_tokens`` overrides every template's budget hint, but never below what the contract
    needs (a label task always has room for its longest label).
    """

    def __init__(
        self,
        engine: Engine,
        json_max_string: int = DEFAULT_MAX_STRING,
        json_max_items: int = DEFAULT_MAX_ITEMS,
        max_tokens: int | None = None,
    ):
        self.engine = engine
        self.json_max_string = json_max_string
        self.json_max_items = json_max_items
        self.max_tokens = max_tokens

    # ------------------------------------------------------------------ building blocks

    def resolve_adapter(self, template: TaskTemplate, adapter: str | None) -> str | None:
        """The request's adapter, else the template's if the engine serves it, else the base model."""
        if adapter is not None:
            return adapter
        if template.adapter and template.adapter in self.engine.adapters:
            return template.adapter
        if template.adapter:
            log.warning("task %s names adapter %r which this engine does not serve; using the base model", template.name, template.adapter)
        return None

    def build_request(
        self,
        template: TaskTemplate,
        inputs: dict[str, Any],
        lang: str = "en",
        adapter: str | None = None,
        variant: int = 0,
        few_shot: int = 0,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> GenerationRequest:
        """Validate inputs (``InputError`` names the field), render, and attach the output contract."""
        values = template.validate_inputs(inputs)
        messages = template.render_messages(values, lang=lang, variant=variant, few_shot=few_shot)
        constraint = template.output.constraint(lang, values, json_max_string=self.json_max_string, json_max_items=self.json_max_items)
        return GenerationRequest(
            messages=messages,
            max_tokens=template.output.token_budget(lang, self.max_tokens),
            temperature=temperature,
            seed=seed,
            adapter=self.resolve_adapter(template, adapter),
            **constraint.request_fields(),
        )

    def to_answer(
        self,
        template: TaskTemplate,
        request: GenerationRequest,
        result: GenerationResult,
        lang: str,
        latency_ms: float,
        inputs: dict[str, Any] | None = None,
    ) -> TaskAnswer:
        """Parse and check the engine's text against the contract (and ``inputs``, the request's, for
        kinds grounded in them, which also locate its spans); ``ContractError`` (with ``.raw``) if it
        breaks the contract, ``UngroundedError`` if it quotes what the inputs do not hold."""
        output = template.output.locate(template.parse_output(result.text, lang=lang, inputs=inputs), inputs)
        return TaskAnswer(
            task=template.name,
            version=template.version,
            lang=lang,
            output=output,
            raw_text=result.text,
            model=self.engine.model_name,
            adapter=request.adapter,
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
            latency_ms=latency_ms,
            finish_reason=result.finish_reason,
        )

    # ------------------------------------------------------------------ async (service)

    def retry_request(self, request: GenerationRequest, result: GenerationResult) -> GenerationRequest | None:
        """A second attempt for a JSON answer cut off by ``max_tokens``: the schema shrunk to fit.

        Constrained decoding guarantees the shape but not that the document closes in time; a
        model that spends its budget on one long string gets one retry whose worst case fits.
        """
        if request.json_schema is None or result.finish_reason != "length":
            return None
        fitted = fit_schema(request.json_schema, request.max_tokens)
        return request.model_copy(update={"json_schema": fitted}) if fitted != request.json_schema else None

    @staticmethod
    def resample(request: GenerationRequest) -> GenerationRequest:
        """The one retry of an ungrounded answer: the same request, sampled (seeded when the request is)."""
        seed = None if request.seed is None else request.seed + 1
        return request.model_copy(update={"temperature": max(request.temperature, RESAMPLE_TEMPERATURE), "seed": seed})

    async def agenerate(self, request: GenerationRequest) -> tuple[GenerationRequest, GenerationResult]:
        """Generate, with the budget retry of ``retry_request``; returns the request actually answered."""
        result = await self.engine.generate(request)
        retry = self.retry_request(request, result)
        if retry is not None:
            return retry, await self.engine.generate(retry)
        return request, result

    async def arun(
        self, template: TaskTemplate, inputs: dict[str, Any], lang: str = "en", adapter: str | None = None, **kw: Any
    ) -> TaskAnswer:
        request = self.build_request(template, inputs, lang, adapter, **kw)
        t0 = time.perf_counter()
        answered, result = await self.agenerate(request)
        try:
            return self.to_answer(template, answered, result, lang, (time.perf_counter() - t0) * 1000, inputs)
        except UngroundedError:
            answered, result = await self.agenerate(self.resample(request))
            return self.to_answer(template, answered, result, lang, (time.perf_counter() - t0) * 1000, inputs)

    async def arun_batch(
        self,
        template: TaskTemplate,
        inputs: list[dict[str, Any]],
        lang: str = "en",
        adapter: str | None = None,
        return_exceptions: bool = False,
        **kw: Any,
    ) -> list[TaskAnswer | Exception]:
        coros = [self.arun(template, x, lang, adapter, **kw) for x in inputs]
        return list(await asyncio.gather(*coros, return_exceptions=return_exceptions))

    # ------------------------------------------------------------------ sync (eval, rollouts)

    def run(self, template: TaskTemplate, inputs: dict[str, Any], lang: str = "en", adapter: str | None = None, **kw: Any) -> TaskAnswer:
        answer = self.run_batch(template, [inputs], lang, adapter, **kw)[0]
        assert isinstance(answer, TaskAnswer)  # return_exceptions=False re-raises instead
        return answer

    def run_batch(
        self,
        template: TaskTemplate,
        inputs: list[dict[str, Any]],
        lang: str = "en",
        adapter: str | None = None,
        return_exceptions: bool = False,
        **kw: Any,
    ) -> list[TaskAnswer | Exception]:
        """Answer many inputs in one engine batch.

        With ``return_exceptions`` a failed item (``InputError``, ``ContractError``) is returned in
        its place instead of raised, so one bad answer does not sink an eval batch.
        """
        out: list[TaskAnswer | Exception | None] = [None] * len(inputs)
        requests: list[tuple[int, GenerationRequest]] = []
        for i, x in enumerate(inputs):
            try:
                requests.append((i, self.build_request(template, x, lang, adapter, **kw)))
            except Exception as e:
                if not return_exceptions:
                    raise
                out[i] = e
        t0 = time.perf_counter()
        results = self.engine.generate_batch([r for _, r in requests]) if requests else []
        retries = [(k, self.retry_request(req, res)) for k, ((_, req), res) in enumerate(zip(requests, results))]
        retries = [(k, r) for k, r in retries if r is not None]
        if retries:
            for (k, req), res in zip(retries, self.engine.generate_batch([r for _, r in retries])):
                requests[k], results[k] = (requests[k][0], req), res
        answers = [self._attempt(template, req, res, lang, inputs[i]) for (i, req), res in zip(requests, results)]
        again = [k for k, a in enumerate(answers) if isinstance(a, UngroundedError)]
        if again:
            for k, res in zip(again, self.engine.generate_batch([self.resample(requests[k][1]) for k in again])):
                answers[k] = self._attempt(template, requests[k][1], res, lang, inputs[requests[k][0]])
        latency = (time.perf_counter() - t0) * 1000 / max(1, len(requests))
        for (i, _), a in zip(requests, answers):
            if isinstance(a, ContractError):
                if not return_exceptions:
                    raise a
                out[i] = a
            else:
                out[i] = a.model_copy(update={"latency_ms": latency})
        return out  # type: ignore[return-value]

    def _attempt(
        self, template: TaskTemplate, request: GenerationRequest, result: GenerationResult, lang: str, inputs: dict[str, Any]
    ) -> TaskAnswer | ContractError:
        try:
            return self.to_answer(template, request, result, lang, 0.0, inputs)
        except ContractError as e:
            return e
