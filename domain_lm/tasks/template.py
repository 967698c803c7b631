"""``TaskTemplate``: a validated, immutable task template that renders prompts and checks outputs.

Prompts are Jinja2 rendered in a budgeted sandbox (``sandbox.BudgetedSandbox``, ``StrictUndefined``):
a template written by a product owner cannot reach Python internals, mutate its inputs, silently
render a missing variable as "", or spend unbounded time or memory (see ``sandbox``). Everything
that can be checked when the file is loaded is checked then (Jinja syntax, variables, examples that
render and satisfy the output contract), so a bad template fails at ``tasks validate`` / registration
time with ``file:line``, not per request. The output contract (``self.output``, one class per output
kind) does the kind-specific work; this class adds the task's name to its errors.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any, TypeVar

import jinja2
import yaml
from jinja2 import meta
from pydantic import PrivateAttr, ValidationError

from domain_lm.core.hashing import sha256_json
from domain_lm.tasks import sandbox
from domain_lm.tasks.contracts import CONTRACTS
from domain_lm.tasks.contracts.base import Tokenizer
from domain_lm.tasks.errors import ContractError, InputError, TemplateError
from domain_lm.tasks.sandbox import MAX_RENDER_CHARS, RenderLimitError, render_budget
from domain_lm.tasks.spec import TemplateSpec
from domain_lm.tasks.yamlsrc import SourceMap, load_yaml

__all__ = ["MAX_RENDER_CHARS", "TaskTemplate"]

_ENV = sandbox.ENV
#: Names a prompt may use besides its declared inputs.
_EXTRA_VARS = {"lang"}
#: Private attributes rebuilt after unpickling: compiled Jinja cannot be pickled, and it is derived
#: data anyway (datasets.map workers and spawned processes rebuild it).
_DERIVED = ("_compiled",)
_PY_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "list": list}
_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "list": "array"}
#: pydantic error types of the ``output.kind`` discriminator (the error belongs on the ``kind`` key).
_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")
T = TypeVar("T")


def _error_loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """A pydantic error location as a YAML key path: no validator names, no ``output`` union tag."""
    loc = [x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-"))]
    if len(loc) >= 2 and loc[0] == "output" and loc[1] in CONTRACTS:
        del loc[1]
    if err["type"] in _TAG_ERRORS and tuple(loc) == ("output",):
        loc.append("kind")
    return tuple(loc)


class TaskTemplate(TemplateSpec):
    """One version of one task. Frozen: a new version is a new object, never an edit."""

    _source: SourceMap | None = PrivateAttr(None)
    _text: str | None = PrivateAttr(None)  # the YAML it was read from (comments kept when persisted)
    _compiled: dict[tuple[str, str | int], jinja2.Template] = PrivateAttr(default_factory=dict)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_yaml(cls, text: str, file: str = "<template>") -> "TaskTemplate":
        """Parse and fully check a template; any problem raises ``TemplateError`` with file:line."""
        data, source = load_yaml(text, file)
        if not isinstance(data, dict):
            raise TemplateError("a template file must be a YAML mapping (name, version, inputs, output, prompts, ...)", file, 1)
        template = cls.from_dict(data, source)
        template._text = text
        return template

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: SourceMap | None = None) -> "TaskTemplate":
        source = source or SourceMap(file="<template>")
        try:
            return cls.model_validate(data, context={"source": source})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            loc = _error_loc(err)
            where = ".".join(map(str, loc)) or "template"
            msg = err["msg"].removeprefix("Value error, ")
            more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
            raise source.error(loc, f"{where}: {msg}{more}") from None

    def model_post_init(self, context: Any) -> None:
        self._source = (context or {}).get("source") if isinstance(context, dict) else None
        self._source = self._source or SourceMap(file="<template>")
        self._check_languages()
        self._compile()
        with render_budget(sandbox.CHECK_OPS, sandbox.CHECK_SECONDS, scope="checking the template"):
            self._check_examples()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = {k: v for k, v in (state.get("__pydantic_private__") or {}).items() if k not in _DERIVED}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._compiled = {}
        self._compile()

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> "TaskTemplate":
        return self  # immutable: a copy would be indistinguishable

    @property
    def file(self) -> str:
        return self._source.file if self._source else "<template>"

    def _err(self, path: tuple[Any, ...], message: str) -> TemplateError:
        return self._source.error(path, message)

    def _check_languages(self) -> None:
        langs = set(self.languages)
        if len(langs) != len(self.languages):
            raise self._err(("languages",), "languages has duplicates")
        if set(self.prompts) != langs:
            missing, extra = sorted(langs - set(self.prompts)), sorted(set(self.prompts) - langs)
            raise self._err(
                ("prompts",), f"prompts must have exactly the template languages {sorted(langs)}: missing {missing}, extra {extra}"
            )
        for path, message in self.output.check_languages(self.languages):
            raise self._err(("output", *path), message)
        for path, message in self.output.check_inputs({name: f.type for name, f in self.inputs.items()}):
            raise self._err(("output", *path), message)
        for i, ex in enumerate(self.examples):
            if ex.lang not in langs:
                raise self._err(("examples", i, "lang"), f"example language {ex.lang!r} is not in languages {sorted(langs)}")
        for lang in self.languages:
            if not any(ex.lang == lang for ex in self.examples):
                raise self._err(("examples",), f"needs at least one example in {lang!r} (used by validate, few-shot and tests)")
        for name, field in self.inputs.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in _EXTRA_VARS:
                raise self._err(("inputs", name), f"input name {name!r} must be an identifier other than {sorted(_EXTRA_VARS)}")
            if field.type not in ("string", "list") and field.max_length is not None:
                raise self._err(("inputs", name, "max_length"), f"max_length applies to string and list inputs, not {field.type}")

    def _compile(self) -> None:
        allowed = set(self.inputs) | _EXTRA_VARS | set(_ENV.globals)
        for lang, prompt in self.prompts.items():
            parts: list[tuple[str | int, tuple[Any, ...], str]] = [("system", ("prompts", lang, "system"), prompt.system)]
            parts += [(i, ("prompts", lang, "variants", i), v) for i, v in enumerate(prompt.variants)]
            for key, path, src in parts:
                where = ".".join(map(str, path))
                try:
                    ast = _ENV.parse(src)
                    unknown = meta.find_undeclared_variables(ast) - allowed
                    compiled = _ENV.compile_guarded(ast)
                except jinja2.TemplateSyntaxError as e:
                    raise TemplateError(
                        f"Jinja syntax error in {where}: {e.message}", self.file, self._source.text_line(path, e.lineno)
                    ) from None
                except Exception as e:  # noqa: BLE001 - nesting too deep, a literal too large: the template's fault
                    raise self._err(path, f"{where} cannot be compiled: {type(e).__name__}: {e}") from None
                if unknown:
                    raise self._err(path, f"{where} uses undeclared variable(s) {sorted(unknown)}; declared inputs: {sorted(self.inputs)}")
                if key != "system" and not src.strip():
                    raise self._err(path, "an instruction variant cannot be empty")
                self._compiled[(lang, key)] = compiled

    def _check_examples(self) -> None:
        for i, ex in enumerate(self.examples):
            try:
                inputs = self.validate_inputs(ex.inputs)
            except InputError as e:
                raise self._err(("examples", i, "inputs", e.field), f"example {i}: {e}") from None
            try:
                text = self.target_text(ex.output, ex.lang)
                back = self.parse_output(text, ex.lang, inputs)
            except ContractError as e:
                raise self._err(("examples", i, "output"), f"example {i} output breaks the contract: {e.message}") from None
            if back != ex.output:
                raise self._err(("examples", i, "output"), f"example {i} output does not round-trip: {ex.output!r} -> {text!r} -> {back!r}")
            for v in range(self.num_variants(ex.lang)):
                try:
                    self._messages(inputs, ex.lang, v)
                except TemplateError as e:
                    raise self._err(("prompts", ex.lang, "variants", v), f"variant {v} fails to render example {i}: {e.message}") from None

    # ------------------------------------------------------------------ inputs and rendering

    def validate_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Check ``inputs`` against the declared fields; return them with optional fields filled.

        Raises ``InputError`` naming the first bad field: unknown, missing, wrong type, too long.
        """
        if not isinstance(inputs, dict):
            raise InputError("inputs", f"must be an object with fields {sorted(self.inputs)}")
        for name in inputs:
            if name not in self.inputs:
                raise InputError(str(name), f"unknown field for task {self.name!r}; expected {sorted(self.inputs)}")
        out: dict[str, Any] = {}
        for name, field in self.inputs.items():
            value = inputs.get(name)
            if value is None:
                if field.required:
                    raise InputError(name, "is required")
                out[name] = field.default
                continue
            want = _PY_TYPES[field.type]
            if not isinstance(value, want) or (field.type != "boolean" and isinstance(value, bool)):
                raise InputError(name, f"must be a {field.type}, got {type(value).__name__}")
            if field.type == "list" and not all(isinstance(x, str) for x in value):
                raise InputError(name, "must be a list of strings")
            if field.type == "string" and field.required and not value.strip():
                raise InputError(name, "must not be empty")
            if field.max_length is not None and len(value) > field.max_length:
                unit = "characters" if field.type == "string" else "items"
                raise InputError(name, f"is {len(value)} {unit} long; the maximum is {field.max_length}")
            out[name] = value
        return out

    def num_variants(self, lang: str = "en") -> int:
        return len(self._prompt(lang).variants)

    def _prompt(self, lang: str):
        try:
            return self.prompts[lang]
        except KeyError:
            raise InputError("lang", f"task {self.name!r} supports {self.languages}, not {lang!r}") from None

    def _render(self, lang: str, key: str | int, ctx: dict[str, Any]) -> str:
        path = ("prompts", lang, "system" if key == "system" else "variants") + (() if key == "system" else (key,))
        where = ".".join(map(str, path))
        try:
            return sandbox.render(self._compiled[(lang, key)], ctx).strip()
        except RenderLimitError as e:
            raise self._err(path, f"task {self.name!r} v{self.version}: {where} exceeds the render budget: {e}") from None
        except Exception as e:  # noqa: BLE001 - sandbox violations, undefined names, filters' own errors
            raise self._err(path, f"task {self.name!r} v{self.version} failed to render {where}: {type(e).__name__}: {e}") from None

    def _messages(self, inputs: dict[str, Any], lang: str, variant: int) -> tuple[str, str]:
        ctx = {**inputs, "lang": lang}
        with render_budget():
            return self._render(lang, "system", ctx), self._render(lang, variant, ctx)

    def render_messages(
        self,
        inputs: dict[str, Any],
        lang: str = "en",
        variant: int = 0,
        few_shot: int = 0,
        few_shot_seed: int | None = None,
    ) -> list[dict[str, str]]:
        """Chat messages for one request: system (if any), ``few_shot`` example turns, the user turn.

        ``variant`` picks an instruction phrasing (``0 <= variant < num_variants(lang)``); few-shot
        turns use the same phrasing. Examples are taken in file order (or shuffled with
        ``few_shot_seed``), never the example whose inputs equal ``inputs``, and at most as many
        as the template has for ``lang``. No assistant turn for the request itself.
        """
        n = self.num_variants(lang)
        if not isinstance(variant, int) or not 0 <= variant < n:
            raise InputError("variant", f"must be in 0..{n - 1} for {self.name!r} in {lang!r}, got {variant!r}")
        values = self.validate_inputs(inputs)
        with render_budget():  # one budget for every message of the request (few-shot turns included)
            system, user = self._messages(values, lang, variant)
            messages = [{"role": "system", "content": system}] if system else []
            if few_shot > 0:
                pool = [ex for ex in self.examples if ex.lang == lang and ex.few_shot and self.validate_inputs(ex.inputs) != values]
                if few_shot_seed is not None:
                    random.Random(few_shot_seed).shuffle(pool)
                for ex in pool[:few_shot]:
                    _, shot = self._messages(self.validate_inputs(ex.inputs), lang, variant)
                    messages += [{"role": "user", "content": shot}, {"role": "assistant", "content": self.target_text(ex.output, lang)}]
        messages.append({"role": "user", "content": user})
        return messages

    # ------------------------------------------------------------------ output contract (delegated)

    def _contract(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the contract; its ``ContractError`` gets this task's name."""
        try:
            return fn(*args)
        except ContractError as e:
            if e.task is not None:
                raise
            raise e.with_task(self.name) from None

    def choices(self, lang: str = "en") -> list[str] | None:
        """The exact strings the answer must be one of (decode-time constraint), for closed answer sets."""
        self._prompt(lang)
        return self.output.choices(lang)

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must match (a copy), for JSON answers; else None."""
        return self.output.json_schema()

    def output_schema(self, lang: str = "en") -> dict[str, Any]:
        """JSON schema of the typed output value, for any kind (API docs)."""
        return self.output.value_schema()

    def input_schema(self) -> dict[str, Any]:
        """JSON schema of the inputs object (API docs and request validation by clients)."""
        props: dict[str, Any] = {}
        for name, f in self.inputs.items():
            p: dict[str, Any] = {"type": _JSON_TYPES[f.type]}
            if f.description:
                p["description"] = f.description
            if f.type == "list":
                p["items"] = {"type": "string"}
            if f.max_length is not None:
                p["maxLength" if f.type == "string" else "maxItems"] = f.max_length
            props[name] = p
        required = [n for n, f in self.inputs.items() if f.required]
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    def target_text(self, value: Any, lang: str = "en") -> str:
        """The exact assistant answer for a typed output value (SFT targets, few-shot turns)."""
        self._prompt(lang)
        return self._contract(self.output.target_text, value, lang)

    def parse_output(self, text: str, lang: str = "en", inputs: dict[str, Any] | None = None) -> Any:
        """The typed value of a model answer, or ``ContractError`` (with ``.raw``) if it breaks the contract.

        What is accepted depends on the output kind (see ``domain_lm.tasks.contracts``): labels by
        display string, canonical label or alias; JSON, possibly in a code fence, matching the
        schema; text, non-empty and at most ``max_length`` characters. ``inputs`` (the request's)
        let a kind check an answer against them (spans copied from the text).
        """
        self._prompt(lang)
        if not isinstance(text, str):
            raise ContractError(f"expected text, got {type(text).__name__}", raw=repr(text), task=self.name)
        return self._contract(self.output.parse, text, lang, inputs)

    def coerce_output(self, raw: Any) -> Any:
        """A dataset's raw gold value shaped into the output type (``ContractError`` if it cannot be)."""
        return self._contract(self.output.coerce, raw)

    def score(self, gold: list[Any], pred: list[Any | None], lang: str | None = None) -> dict[str, Any]:
        """The task metric over typed values (``None`` predictions broke the contract and count as wrong)."""
        return self.output.score(self.metric, gold, pred, lang)

    def budget_warnings(self, tokenizer: Tokenizer | None = None) -> list[str]:
        """Why ``output.max_tokens`` is too small for some language (``tasks validate`` prints these)."""
        found = ((lang, self.output.budget_warning(lang, tokenizer)) for lang in self.languages)
        return [f"{self.file}: task {self.name!r} v{self.version} ({lang}): {w}" for lang, w in found if w]

    # ------------------------------------------------------------------ identity and persistence

    @property
    def fingerprint(self) -> str:
        """Content hash of the template (stable across formatting and comments)."""
        return sha256_json(self.model_dump(mode="json", by_alias=True))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    def to_yaml(self) -> str:
        """YAML for this template: the text it was loaded from if any, else a clean dump."""
        if self._text is not None:
            return self._text
        return yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False, width=100)

    def examples_for(self, lang: str) -> list[Any]:
        return [ex for ex in self.examples if ex.lang == lang]
