"""Template editor checks: parse a draft exactly as the registry would, and dry-run it.

A draft is YAML text from the editor. It is checked with the same code that registers templates
(``TaskTemplate.from_dict`` with a source map, so every error names its line), plus the one rule
``TemplateRegistry.register`` adds: a new version must be higher than the current one. A draft
without ``version`` gets the next one, as ``register`` would assign it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from domain_lm.inference.tasks import TaskRunner
from domain_lm.tasks import ContractError, InputError, TaskTemplate, TemplateError, TemplateErrors, TemplateRegistry
from domain_lm.tasks.yamlsrc import load_yaml

DRAFT_FILE = "<editor>"

#: What "New task" puts in the editor: a small, valid label task to rename and adapt.
STARTER = """\
# A new task: rename it, describe it, declare its inputs, its answer and how to ask for it.
# Omit `version`: saving assigns the next one (1 for a new task).
name: complaint_channel
description: Decide through which channel a customer complaint should be handled.
languages: [en]
metric: classification
inputs:
  text:
    type: string
    max_length: 2000
    description: The customer's complaint.
output:
  kind: label
  labels: [branch, phone, online]
  max_tokens: 8
prompts:
  en:
    system: You triage bank customer complaints. Answer with exactly one of branch, phone, online.
    variants:
      - |
        Which channel should handle this complaint: branch, phone or online?

        Complaint: {{ text }}
examples:
  - lang: en
    inputs: {text: "The cash machine at the Main Street branch kept my card."}
    output: branch
  - lang: en
    inputs: {text: "I cannot log in to the mobile banking app since the update."}
    output: online
"""
#: Examples answered by a dry run when the user gives no inputs (a real model answers each one).
MAX_DRY_RUN_EXAMPLES = 3


def error_list(e: TemplateError) -> list[dict[str, Any]]:
    """Editor-friendly errors: message without the ``file:line:`` prefix, plus the line."""
    errors = e.errors if isinstance(e, TemplateErrors) else [e]
    return [{"message": x.message, "line": x.line} for x in errors]


def parse_draft(text: str, registry: TemplateRegistry) -> TaskTemplate:
    """The template a draft would register as; ``TemplateError`` (with ``line``) if it would be refused."""
    data, source = load_yaml(text, DRAFT_FILE)
    if not isinstance(data, dict):
        raise TemplateError("a template must be a YAML mapping (name, description, inputs, output, prompts, ...)", DRAFT_FILE, 1)
    name = data.get("name")
    latest = max(registry.versions(name)) if isinstance(name, str) and name in registry else None
    if data.get("version") is None:
        data = {**data, "version": (latest or 0) + 1}
    template = TaskTemplate.from_dict(data, source)
    if latest is not None and template.version <= latest:
        raise source.error(
            ("version",),
            f"version: task {template.name!r} is already at version {latest}; "
            f"use {latest + 1} or delete the version line to get it automatically",
        )
    return template


def as_draft(t: TaskTemplate) -> str:
    """A template's YAML without its ``version`` line: saving it registers the next version."""
    data = {k: v for k, v in t.to_dict().items() if k != "version"}
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


def summary(t: TaskTemplate, registry: TemplateRegistry | None = None) -> dict[str, Any]:
    """What the console shows about a template (its schemas, examples per language)."""
    current = max(registry.versions(t.name)) if registry is not None and t.name in registry else None
    return {
        "name": t.name,
        "version": t.version,
        "current_version": current,
        "description": t.description,
        "languages": list(t.languages),
        "metric": t.metric,
        "adapter": t.adapter,
        "input_schema": t.input_schema(),
        "inputs": {k: f.model_dump(mode="json") for k, f in t.inputs.items()},
        "output": {"kind": t.output.kind, "labels": t.output.classes, "schema": t.output_schema()},
        "variants": {lang: t.num_variants(lang) for lang in t.languages},
        "examples": [{"lang": ex.lang, "inputs": ex.inputs, "output": ex.output} for ex in t.examples],
    }


def unchanged(t: TaskTemplate, registry: TemplateRegistry) -> bool:
    """True when the draft equals the task's current version in everything but the version number."""
    if t.name not in registry:
        return False
    strip = lambda d: {k: v for k, v in d.items() if k != "version"}  # noqa: E731
    return strip(t.to_dict()) == strip(registry.get(t.name).to_dict())


def refused(e: TemplateError) -> dict[str, Any]:
    """What the editor shows for a draft that would be refused."""
    return {"ok": False, "errors": error_list(e), "template": None, "unchanged": False}


def accepted(t: TaskTemplate, registry: TemplateRegistry) -> dict[str, Any]:
    """What the editor shows for a draft that would register as ``t``."""
    return {"ok": True, "errors": [], "template": summary(t, registry), "unchanged": unchanged(t, registry)}


def check(text: str, registry: TemplateRegistry) -> dict[str, Any]:
    try:
        t = parse_draft(text, registry)
    except TemplateError as e:
        return refused(e)
    return accepted(t, registry)


async def dry_run(
    template: TaskTemplate, engine: Any, lang: str, inputs: dict[str, Any] | None = None, variant: int = 0
) -> list[dict[str, Any]]:
    """Render and answer the draft on ``inputs`` (or its own examples for ``lang``) without saving it.

    One item per input: the rendered messages, the expected output (examples), and the model's
    typed answer or the error (``InputError`` names the field; ``ContractError`` carries raw text).
    """
    if inputs is not None:
        cases = [{"inputs": inputs, "expected": None}]
    else:
        cases = [{"inputs": ex.inputs, "expected": ex.output} for ex in template.examples_for(lang)[:MAX_DRY_RUN_EXAMPLES]]
    runner = TaskRunner(engine) if engine is not None else None

    async def one(case: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {**case, "messages": None, "answer": None, "error": None}
        try:
            item["messages"] = template.render_messages(case["inputs"], lang=lang, variant=variant)
            if runner is not None:
                answer = await runner.arun(template, case["inputs"], lang=lang, variant=variant)
                item["answer"] = answer.model_dump(mode="json")
        except InputError as e:
            item["error"] = {"kind": "input", "field": e.field, "message": str(e)}
        except ContractError as e:
            item["error"] = {"kind": "contract", "message": e.message, "raw": e.raw}
        except TemplateError as e:
            item["error"] = {"kind": "template", "message": str(e), "line": e.line}
        except Exception as e:  # an engine failure on a draft must reach the editor, not a 500
            item["error"] = {"kind": "engine", "message": f"{type(e).__name__}: {e}"}
        return item

    return list(await asyncio.gather(*(one(c) for c in cases)))
