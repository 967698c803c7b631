"""How a taught task answers: which engine and adapter serve it, and why; its LLM requests.

``plan_for(template, version, adapters)`` decides from the template's options (``engine``,
``adapter``, ``few_shot``) and the task's current version in the task store (its held-out scores
and calibration) what answers the task; the service and ``domain-lm tasks train`` print the same
``why``. ``llm_request`` builds the engine request: the template's own rendering and contract,
with retrieved few-shot turns and per-label scoring when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from domain_lm.inference.base import GenerationRequest
from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks.adapter_store import TaskVersion
from domain_lm.tasks.fewshot import Shot, shot_messages
from domain_lm.tasks.template import TaskTemplate

#: The systems a task can be answered by (and the rows of its comparison).
SYSTEMS = ("zero_shot", "few_shot", "adapter", "classical")
SYSTEM_NAMES = {"zero_shot": "zero-shot", "few_shot": "few-shot", "adapter": "adapter", "classical": "classical TF-IDF+LR"}


@dataclass(frozen=True)
class ServingPlan:
    """What answers a task now: ``engine`` llm or classical, the LLM's adapter, retrieved shots."""

    engine: Literal["llm", "classical"]
    system: str
    adapter: str | None
    few_shot_k: int
    version: int | None
    temperature: float | None
    why: str
    bias: dict[str, float] | None = None  # per-label calibration offsets (with the temperature)

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "system": self.system,
            "adapter": self.adapter,
            "few_shot": self.few_shot_k,
            "store_version": self.version,
            "calibrated": self.temperature is not None,
            "why": self.why,
        }


def system_result(version: TaskVersion | None, system: str) -> dict[str, Any] | None:
    """A system's held-out result in a version's report (or its later comparison)."""
    if version is None:
        return None
    found = version.report.get("systems", {}).get(system)
    return found if found is not None else version.comparison.get("systems", {}).get(system)


def _score_text(res: dict[str, Any] | None) -> str:
    if not res:
        return "not scored"
    lo, hi = res.get("ci", [None, None])
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
    return f"{res['score']:.3f}{ci}"


def _temperature(res: dict[str, Any] | None) -> float | None:
    cal = (res or {}).get("calibration") or {}
    return float(cal["temperature"]) if cal.get("calibrated") else None


def _bias(res: dict[str, Any] | None) -> dict[str, float] | None:
    """The per-label offsets of a calibrated system, when it kept any (``calibration.calibrate``)."""
    cal = (res or {}).get("calibration") or {}
    bias = cal.get("bias") if cal.get("calibrated") else None
    return {str(k): float(v) for k, v in bias.items()} if isinstance(bias, dict) and any(bias.values()) else None


def plan_for(
    template: TaskTemplate,
    version: TaskVersion | None,
    adapters: Collection[str],
    lookup: Callable[[int], TaskVersion | None] | None = None,
) -> ServingPlan:
    """The serving plan of ``template`` given its current task-store ``version`` (None: never taught)
    and the adapters the engine serves. ``lookup(n)`` reads another version (a pinned adapter's)."""
    k = template.few_shot.k if template.few_shot else 0
    base_system = "few_shot" if k else "zero_shot"
    v = version.version if version else None
    metric = (version.report.get("metric") if version else None) or "score"
    held = f"on {version.report.get('examples', {}).get('evaluated', '?')} held-out examples (v{v})" if version else ""

    # The LLM side: a pinned adapter, else the current version's, else the base model.
    pinned = template.adapter
    llm_adapter, llm_version, note = None, version, ""
    if pinned:
        if pinned in adapters:
            llm_adapter = pinned
            task, _, n = pinned.partition("@")
            llm_version = lookup(int(n)) if lookup and task == template.name and n.isdigit() else None
        else:
            note = f"; pinned adapter {pinned!r} is not loaded"
    elif version is not None and version.adapter in adapters:
        llm_adapter = version.adapter
    llm_system = "adapter" if llm_adapter else base_system
    llm_res = system_result(llm_version, llm_system)
    llm = ServingPlan("llm", llm_system, llm_adapter, 0 if llm_adapter else k, v, _temperature(llm_res), "", _bias(llm_res))
    base_res = system_result(version, base_system)
    base = ServingPlan("llm", base_system, None, k, v, _temperature(base_res), "", _bias(base_res))
    classical_res = system_result(version, "classical")
    classical = ServingPlan("classical", "classical", None, 0, v, _temperature(classical_res), "", _bias(classical_res))
    llm_name = f"adapter {llm_adapter}" if llm_adapter else f"the base model {SYSTEM_NAMES[base_system]}"

    def why(plan: ServingPlan, text: str) -> ServingPlan:
        return replace(plan, why=text + note)

    if template.engine == "base":
        return why(base, f"engine: base; the base model answers {SYSTEM_NAMES[base_system]}")
    if template.engine == "classical":
        if classical_res is None:
            return why(llm, f"engine: classical, but no classical model yet (upload examples); {llm_name} answers")
        return why(classical, f"engine: classical; held-out {metric} {_score_text(classical_res)} {held}")
    if template.engine == "llm" or classical_res is None:
        reason = (
            "engine: llm" if template.engine == "llm" else "engine: auto, no uploaded examples yet" if version is None else "engine: auto"
        )
        return why(llm, f"{reason}; {llm_name} answers" + (f", held-out {metric} {_score_text(llm_res)} {held}" if llm_res else ""))
    if llm_res is None:
        return why(llm, f"engine: auto; {llm_name} answers (not scored yet, so it is not compared with the classical model)")
    if classical_res["score"] >= llm_res["score"]:
        return why(
            classical,
            f"engine: auto; the classical model is at least as good as {llm_name}: {metric} {_score_text(classical_res)} vs "
            f"{_score_text(llm_res)} {held}, so no LLM runs for this task",
        )
    return why(
        llm, f"engine: auto; {llm_name} beats the classical model: {metric} {_score_text(llm_res)} vs {_score_text(classical_res)} {held}"
    )


def scores_labels(template: TaskTemplate, lang: str, max_scored_choices: int) -> bool:
    """Label requests are scored (every label's likelihood, hence a probability) when the task has at
    most ``max_scored_choices`` labels: scoring costs one prompt pass per label on vLLM."""
    choices = template.choices(lang)
    return choices is not None and len(choices) <= max_scored_choices


def llm_request(
    runner: TaskRunner,
    template: TaskTemplate,
    inputs: Mapping[str, Any],
    lang: str,
    adapter: str | None,
    shots: Sequence[Shot] = (),
    score: bool = False,
) -> GenerationRequest:
    """The engine request for one input: the template's rendering and contract (``TaskRunner``), on
    ``adapter`` exactly (None: the base model), with ``shots`` as example turns and label scoring."""
    request = runner.build_request(template, dict(inputs), lang, adapter)
    update: dict[str, Any] = {"adapter": adapter}
    if shots:
        update["messages"] = shot_messages(template, inputs, lang, shots)
    if score:
        update["score_choices"] = True
    return request.model_copy(update=update)
