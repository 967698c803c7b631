"""The task feature: list, describe, answer (one input or a batch), register templates.

Validation happens before admission (a bad input never takes a slot); the answer itself runs inside
``guarded(n)``. What answers a task is its serving plan (``inference.taught.plan_for``: the
template's ``engine``/``adapter``/``few_shot`` options and the task's taught version): the classical
model (routed here, it needs the raw inputs), or the LLM with the task's adapter, retrieved few-shot
turns and, for label tasks, every label scored so the answer carries a (calibrated) probability and
may abstain. Other tasks go through ``TaskRunner.arun`` unchanged. Registration checks the body in
the sandboxed checker process first, then registers it off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import yaml

from domain_lm.inference.classical import CLASSICAL_MODEL
from domain_lm.inference.tasks import Usage
from domain_lm.inference.taught import ServingPlan, llm_request, scores_labels
from domain_lm.tasks import InputError, TaskTemplate, TemplateError, UnknownTaskError
from domain_lm.tasks.adapter_store import adapter_name
from domain_lm.train.teach import report_summary
from services.errors import api_error, input_field, template_error
from services.handler import Call, Handler
from services.security import Principal
from services.tasks.schemas import BatchItem, BatchItemError, BatchRequest, BatchResponse, TaskRegistered, TaskRequest, TaskResponse

log = logging.getLogger(__name__)


def summary(registry: Any, t: TaskTemplate, serving: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": t.name,
        "version": t.version,
        "versions": sorted(registry.versions(t.name)),
        "description": t.description,
        "languages": list(t.languages),
        "output_kind": t.output.kind,
        "metric": t.metric,
        "adapter": t.adapter,
        "engine": t.engine,
        "serving": serving,
    }


def _sum_usage(answers: list[TaskResponse]) -> Usage:
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

    def serving(self, t: TaskTemplate) -> dict[str, Any] | None:
        """What answers ``t`` now and why (None while the engine loads)."""
        engine = self.state.engine
        return self.state.taught.summary(t, engine.adapters) if engine is not None else None

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        registry = self.registry
        return [summary(registry, t, self.serving(t)) for t in registry if principal.may_run(t.name)]

    def describe(self, principal: Principal, name: str, version: int | None) -> dict[str, Any]:
        t = self.template(principal, name, version)
        out = summary(self.registry, t, self.serving(t))
        out["input_schema"] = t.input_schema()
        out["output_schema"] = t.output_schema()
        choices = {lang: t.choices(lang) for lang in t.languages}
        out["choices"] = choices if any(c is not None for c in choices.values()) else None
        return out

    def training(self, principal: Principal, name: str) -> dict[str, Any]:
        """The task's taught versions, newest first (each system's held-out score, interval and
        calibration; no per-example predictions), and what serves it now."""
        t = self.template(principal, name)
        store = self.state.adapter_store
        versions = []
        for n in reversed(store.versions(name) if store is not None else []):
            v = self.state.taught.version(name, n)
            if v is None:
                continue
            versions.append(
                {
                    **report_summary({**v.report, "comparison": v.comparison}),
                    "adapter": v.adapter,
                    "created": v.report.get("created"),
                    "author": v.report.get("author"),
                }
            )
        return {"task": name, "template_version": t.version, "engine": t.engine, "serving": self.serving(t), "versions": versions}

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

    def _count(self, response: TaskResponse) -> TaskResponse:
        self.state.metrics.tokens.labels(response.task, "prompt").inc(response.usage.prompt_tokens)
        self.state.metrics.tokens.labels(response.task, "completion").inc(response.usage.completion_tokens)
        return response

    # ------------------------------------------------------------------ answer

    async def answer(
        self, t: TaskTemplate, inputs: dict[str, Any], lang: str, adapter: str | None, confidence: bool | None = None
    ) -> TaskResponse:
        """One answer by the task's serving plan (a request's ``adapter`` forces that LLM adapter). A label answer
        is scored (every label's likelihood: a probability) when the task abstains, its plan is calibrated, the
        request asks or the service always scores; otherwise it is one constrained decode, the fast path."""
        state = self.state
        runner = self.runner
        plan = state.taught.plan(t, runner.engine.adapters)
        if adapter is None and plan.engine == "classical":
            return await self._classical(t, inputs, lang, plan)
        labels = t.output.classes is not None
        if not labels and not plan.few_shot_k and adapter is None and plan.adapter == runner.resolve_adapter(t, None):
            answer = await runner.arun(t, inputs, lang, None)  # nothing taught changes this answer: the runner's own path
            return TaskResponse.model_validate(answer.model_dump())
        use = adapter if adapter is not None else plan.adapter
        shots = await state.taught.shots(t, inputs, lang, plan.few_shot_k) if use is None else []
        wanted = confidence if confidence is not None else self.settings.label_probabilities or self._needs_scores(t, plan, use)
        score = labels and wanted and scores_labels(t, lang, self.settings.max_scored_choices)
        request = llm_request(runner, t, inputs, lang, use, shots, score)
        t0 = time.perf_counter()
        request, result = await runner.agenerate(request)
        answer = runner.to_answer(t, request, result, lang, (time.perf_counter() - t0) * 1000, inputs)
        out = TaskResponse.model_validate({**answer.model_dump(), "few_shot": len(shots)})
        if labels and result.choice_logprobs:
            same = use == plan.adapter and (use is not None or len(shots) == plan.few_shot_k)
            temperature = plan.temperature if same else None  # a calibration holds only for the system it was fitted on
            probs = t.output.probabilities(result.choice_logprobs, lang, temperature or 1.0, plan.bias if same else None)
            out = self._decided(out, t, probs, temperature is not None)
        return out

    @staticmethod
    def _needs_scores(t: TaskTemplate, plan: ServingPlan, use: str | None) -> bool:
        """The answer itself depends on the probability: an abstain threshold, or a calibrated taught adapter."""
        abstains = getattr(t.output, "abstain_below", None) is not None
        return abstains or (plan.temperature is not None and use == plan.adapter)

    @staticmethod
    def _decided(out: TaskResponse, t: TaskTemplate, probs: dict[str, float], calibrated: bool) -> TaskResponse:
        output, top, p, abstained = t.output.decide(probs)
        update = {"output": output, "top_label": top, "confidence": p, "calibrated": calibrated, "abstained": abstained}
        return out.model_copy(update=update)

    async def _classical(self, t: TaskTemplate, inputs: dict[str, Any], lang: str, plan: ServingPlan) -> TaskResponse:
        version = self.state.taught.current(t.name)
        assert version is not None  # a classical plan comes from a version with a classical model
        t0 = time.perf_counter()
        model = await self.state.taught.classical(t, version)
        scores = await asyncio.to_thread(model.choice_logprobs, inputs, lang)
        probs = t.output.probabilities(scores, lang, plan.temperature or 1.0, plan.bias)
        top = max(probs, key=lambda lab: probs[lab])
        out = TaskResponse(
            task=t.name,
            version=t.version,
            lang=lang,
            output=top,
            raw_text=t.output.target_text(top, lang),
            model=f"{CLASSICAL_MODEL}:{adapter_name(t.name, version.version)}",
            adapter=None,
            usage=Usage(),
            latency_ms=(time.perf_counter() - t0) * 1000,
            engine="classical",
        )
        return self._decided(out, t, probs, plan.temperature is not None)

    async def run(self, call: Call, name: str, body: TaskRequest) -> TaskResponse:
        call.note(task=name)
        t = self.template(call.principal, name, body.version)
        inputs = self.validated(t, body.input, body.lang)
        if self.settings.log_bodies:
            call.note(body=inputs)
        self.runner  # noqa: B018 - 503 before taking a slot while the engine loads
        async with self.guarded(1, task=name):
            response = await self.answer(t, inputs, body.lang, body.adapter, body.confidence)
        return self._count(response)

    async def run_batch(self, call: Call, name: str, body: BatchRequest) -> BatchResponse:
        call.note(task=name)
        if len(body.inputs) > self.settings.max_batch_items:
            raise api_error(422, "invalid_input", f"a batch holds at most {self.settings.max_batch_items} inputs", field="inputs")
        t = self.template(call.principal, name, body.version)
        inputs = [self.validated(t, x, body.lang, prefix=f"inputs.{i}") for i, x in enumerate(body.inputs)]
        if self.settings.log_bodies:
            call.note(body=inputs)
        self.runner  # noqa: B018
        t0 = time.perf_counter()
        async with self.guarded(len(inputs), task=name):
            answers = (self.answer(t, x, body.lang, body.adapter, body.confidence) for x in inputs)
            results = await asyncio.gather(*answers, return_exceptions=True)
        items = []
        for i, res in enumerate(results):
            if isinstance(res, TaskResponse):
                items.append(BatchItem(index=i, result=self._count(res)))
            else:
                detail = self.error(res, name).detail
                items.append(
                    BatchItem(
                        index=i, error=BatchItemError(error=detail["error"], message=detail["message"], raw_text=detail.get("raw_text"))
                    )
                )
        answers = [r for r in results if isinstance(r, TaskResponse)]
        return BatchResponse(
            task=t.name, version=t.version, items=items, usage=_sum_usage(answers), latency_ms=(time.perf_counter() - t0) * 1000
        )

    # ------------------------------------------------------------------ register

    async def choose(self, call: Call, name: str, choice: str, version: int | None = None, k: int | None = None) -> dict[str, Any]:
        """Register the task's next template version with what should answer it (the console's
        "serve with" buttons): the same check, lane and audit as ``PUT /v1/tasks/{name}``."""
        if not call.principal.may_change(name):
            raise api_error(403, "forbidden", f"key {call.principal.id!r} may not change task {name!r}")
        t = self.template(call.principal, name)
        data = {k_: v for k_, v in t.to_dict().items() if k_ not in ("version", "engine", "few_shot", "adapter")}
        shots = {"k": k or (t.few_shot.k if t.few_shot else 4)}
        if choice == "adapter" and version is not None:
            store = self.state.adapter_store
            v = store.version(name, version) if store is not None else None
            if v is None or v.adapter is None:
                raise api_error(404, "unknown_version", f"task {name!r} has no taught version {version} with an adapter")
            data["adapter"] = v.adapter
        data["engine"] = {"auto": "auto", "adapter": "llm", "few_shot": "base", "zero_shot": "base", "classical": "classical"}[choice]
        if choice == "few_shot" or (choice in ("auto", "classical") and t.few_shot):
            data["few_shot"] = shots
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)
        registered = await self.register(call, name, text.encode("utf-8"))
        return {**registered.model_dump(), "serving": self.serving(self.registry.get(name))}

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
