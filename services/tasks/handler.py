"""The task feature: list, describe, answer (one input or a batch), register templates.

Validation happens before admission (a bad input never takes a slot); the answer itself is
``TaskRunner.arun``/``arun_batch`` inside ``guarded(n)``. Registration checks the body in the
sandboxed checker process first, then registers it off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from domain_lm.inference.tasks import TaskAnswer, Usage
from domain_lm.tasks import InputError, TaskTemplate, TemplateError, UnknownTaskError
from services.errors import api_error, input_field, template_error
from services.handler import Call, Handler
from services.security import Principal
from services.tasks.schemas import BatchItem, BatchItemError, BatchRequest, BatchResponse, TaskRegistered, TaskRequest, TaskResponse

log = logging.getLogger(__name__)


def summary(registry: Any, t: TaskTemplate) -> dict[str, Any]:
    return {
        "name": t.name,
        "version": t.version,
        "versions": sorted(registry.versions(t.name)),
        "description": t.description,
        "languages": list(t.languages),
        "output_kind": t.output.kind,
        "metric": t.metric,
        "adapter": t.adapter,
    }


def _sum_usage(answers: list[TaskAnswer]) -> Usage:
    prompt = sum(a.usage.prompt_tokens for a in answers)
    completion = sum(a.usage.completion_tokens for a in answers)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class TaskHandler(Handler):
    # ------------------------------------------------------------------ lookup

    def template(self, principal: Principal, name: str, version: int | None = None) -> TaskTemplate:
        """The template, after the permission check (so a scoped key cannot probe which tasks exist)."""
        if not principal.may_run(name):
            raise api_error(403, "forbidden", f"key {principal.id!r} may not use task {name!r}")
        try:
            return self.registry.get(name, version)
        except UnknownTaskError as e:
            raise api_error(404, "unknown_task", str(e)) from None

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        registry = self.registry
        return [summary(registry, t) for t in registry if principal.may_run(t.name)]

    def describe(self, principal: Principal, name: str, version: int | None) -> dict[str, Any]:
        t = self.template(principal, name, version)
        out = summary(self.registry, t)
        out["input_schema"] = t.input_schema()
        out["output_schema"] = t.output_schema()
        choices = {lang: t.choices(lang) for lang in t.languages}
        out["choices"] = choices if any(c is not None for c in choices.values()) else None
        return out

    # ------------------------------------------------------------------ validation

    def validated(self, t: TaskTemplate, inputs: dict[str, Any], lang: str, prefix: str = "input") -> dict[str, Any]:
        """The service's size ceiling, then the template's own checks (422 names the field)."""
        limit = self.settings.max_input_chars
        for key, value in inputs.items():
            size = (
                len(value) if isinstance(value, str) else sum(len(v) for v in value if isinstance(v, str)) if isinstance(value, list) else 0
            )
            if size > limit:
                raise api_error(
                    422,
                    "invalid_input",
                    f"input {key!r} is {size} characters; the service accepts at most {limit}",
                    field=f"{prefix}.{key}",
                )
        try:
            t.num_variants(lang)  # an unknown language is the request's fault, named as "lang"
            return t.validate_inputs(inputs)
        except InputError as e:
            raise api_error(422, "invalid_input", e.message, field=input_field(e, prefix)) from None

    def _count(self, answer: TaskAnswer) -> TaskResponse:
        self.state.metrics.tokens.labels(answer.task, "prompt").inc(answer.usage.prompt_tokens)
        self.state.metrics.tokens.labels(answer.task, "completion").inc(answer.usage.completion_tokens)
        return TaskResponse.model_validate(answer.model_dump())

    # ------------------------------------------------------------------ answer

    async def run(self, call: Call, name: str, body: TaskRequest) -> TaskResponse:
        call.note(task=name)
        t = self.template(call.principal, name, body.version)
        inputs = self.validated(t, body.input, body.lang)
        if self.settings.log_bodies:
            call.note(body=inputs)
        runner = self.runner
        async with self.guarded(1, task=name):
            answer = await runner.arun(t, inputs, body.lang, body.adapter)
        return self._count(answer)

    async def run_batch(self, call: Call, name: str, body: BatchRequest) -> BatchResponse:
        call.note(task=name)
        if len(body.inputs) > self.settings.max_batch_items:
            raise api_error(422, "invalid_input", f"a batch holds at most {self.settings.max_batch_items} inputs", field="inputs")
        t = self.template(call.principal, name, body.version)
        inputs = [self.validated(t, x, body.lang, prefix=f"inputs.{i}") for i, x in enumerate(body.inputs)]
        if self.settings.log_bodies:
            call.note(body=inputs)
        runner = self.runner
        t0 = time.perf_counter()
        async with self.guarded(len(inputs), task=name):
            results = await runner.arun_batch(t, inputs, body.lang, body.adapter, return_exceptions=True)
        items = []
        for i, res in enumerate(results):
            if isinstance(res, TaskAnswer):
                items.append(BatchItem(index=i, result=self._count(res)))
            else:
                detail = self.error(res, name).detail
                items.append(
                    BatchItem(
                        index=i, error=BatchItemError(error=detail["error"], message=detail["message"], raw_text=detail.get("raw_text"))
                    )
                )
        answers = [r for r in results if isinstance(r, TaskAnswer)]
        return BatchResponse(
            task=t.name, version=t.version, items=items, usage=_sum_usage(answers), latency_ms=(time.perf_counter() - t0) * 1000
        )

    # ------------------------------------------------------------------ register

    async def register(self, call: Call, name: str, raw: bytes) -> TaskRegistered:
        """Check the body in the sandboxed checker (400 within its budget), then register it off the loop."""
        call.note(task=name)
        if not call.principal.may_change(name):
            raise api_error(403, "forbidden", f"key {call.principal.id!r} may not change task {name!r}")
        registry = self.registry
        if not registry.writable:
            raise api_error(
                409,
                "read_only",
                "run-time templates are off: this service serves a verified bundle's templates and has no "
                "writable template store (start it with --template-store DIR or DOMAIN_LM_TEMPLATE_STORE)",
            )
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            raise api_error(400, "invalid_template", "body must be a template mapping (YAML or JSON)")
        try:
            checked = await self.state.checker.check(text, default_name=name)
        except TemplateError as e:
            raise template_error(e) from None
        if checked.name != name:
            raise api_error(400, "invalid_template", f"template name {checked.name!r} does not match the URL's {name!r}")
        try:
            t = await asyncio.to_thread(registry.register, text, call.principal.id, call.scope.get("dlm_request_id"), name)
        except TemplateError as e:
            raise template_error(e) from None
        except OSError:
            log.exception("template store write failed")
            raise api_error(503, "not_persisted", "the template store cannot be written; see the service log") from None
        return TaskRegistered(name=t.name, version=t.version, versions=sorted(registry.versions(t.name)), persisted=True)
