"""``TaskTemplate``: a validated, immutable task template that renders prompts and checks outputs.

Prompts are Jinja2 rendered in ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``: a
template written by a product owner cannot reach Python internals, mutate its inputs, or silently
render a missing variable as "". Everything that can be checked when the file is loaded is checked
then (Jinja syntax, variables, examples that render and satisfy the output contract), so a bad
template fails at ``tasks validate`` / registration time with ``file:line``, not per request.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import jinja2
import jsonschema
import yaml
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import PrivateAttr, ValidationError

from domain_lm.hashing import sha256_json
from domain_lm.tasks.errors import ContractError, InputError, TemplateError
from domain_lm.tasks.spec import TemplateSpec
from domain_lm.tasks.yamlsrc import SourceMap, load_yaml

#: A rendered message longer than this aborts rendering (a loop in a template cannot eat memory).
MAX_RENDER_CHARS = 1_000_000

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)
#: Names a prompt may use besides its declared inputs.
_EXTRA_VARS = {"lang"}
#: Private attributes rebuilt after unpickling: compiled Jinja and the schema validator cannot be
#: pickled, and they are derived data anyway (datasets.map workers and spawned processes rebuild them).
_DERIVED = ("_compiled", "_label_lookup", "_validator")
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_LABEL_STRIP = " \t\r\n\"'`“”‘’「」『』"
_LABEL_TRAIL = ".。!！"
_PY_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "list": list}
_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "list": "array"}


def _norm_label(s: str) -> str:
    return s.strip(_LABEL_STRIP).rstrip(_LABEL_TRAIL).strip(_LABEL_STRIP).casefold()


class TaskTemplate(TemplateSpec):
    """One version of one task. Frozen: a new version is a new object, never an edit."""

    _source: SourceMap | None = PrivateAttr(None)
    _text: str | None = PrivateAttr(None)  # the YAML it was read from (comments kept when persisted)
    _compiled: dict[tuple[str, str | int], jinja2.Template] = PrivateAttr(default_factory=dict)
    _label_lookup: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)
    _validator: Any = PrivateAttr(None)

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
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            where = ".".join(map(str, loc)) or "template"
            msg = err["msg"].removeprefix("Value error, ")
            more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
            raise source.error(loc, f"{where}: {msg}{more}") from None

    def model_post_init(self, context: Any) -> None:
        self._source = (context or {}).get("source") if isinstance(context, dict) else None
        self._source = self._source or SourceMap(file="<template>")
        self._check_languages()
        self._compile()
        self._build_contract()
        self._check_examples()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = {k: v for k, v in (state.get("__pydantic_private__") or {}).items() if k not in _DERIVED}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._compiled, self._label_lookup, self._validator = {}, {}, None
        self._compile()
        self._build_contract()

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
            raise self._err(("prompts",), f"prompts must have exactly the template languages {sorted(langs)}: missing {missing}, extra {extra}")
        for lang in self.output.display:
            if lang not in langs:
                raise self._err(("output", "display", lang), f"display language {lang!r} is not in languages")
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
                try:
                    ast = _ENV.parse(src)
                    compiled = _ENV.from_string(ast)
                except jinja2.TemplateSyntaxError as e:
                    raise TemplateError(f"Jinja syntax error in {'.'.join(map(str, path))}: {e.message}", self.file, self._source.text_line(path, e.lineno)) from None
                unknown = meta.find_undeclared_variables(ast) - allowed
                if unknown:
                    raise self._err(path, f"{'.'.join(map(str, path))} uses undeclared variable(s) {sorted(unknown)}; declared inputs: {sorted(self.inputs)}")
                if key != "system" and not src.strip():
                    raise self._err(path, "an instruction variant cannot be empty")
                self._compiled[(lang, key)] = compiled

    def _build_contract(self) -> None:
        out = self.output
        if out.kind == "label":
            for lang in self.languages:
                lookup: dict[str, str] = {}
                shown = out.display.get(lang, {})
                for label in out.labels or []:
                    accepted = [shown.get(label, label), label, *out.aliases.get(lang, {}).get(label, [])]
                    for s in accepted:
                        key = _norm_label(s)
                        if not key:
                            raise self._err(("output",), f"label {label!r} has an empty display/alias in {lang!r}")
                        if lookup.setdefault(key, label) != label:
                            raise self._err(("output",), f"{s!r} would mean both {lookup[key]!r} and {label!r} in {lang!r}")
                self._label_lookup[lang] = lookup
        elif out.kind == "json":
            self._validator = jsonschema.Draft202012Validator(out.schema_)

    def _check_examples(self) -> None:
        for i, ex in enumerate(self.examples):
            try:
                inputs = self.validate_inputs(ex.inputs)
            except InputError as e:
                raise self._err(("examples", i, "inputs", e.field), f"example {i}: {e}") from None
            try:
                text = self.target_text(ex.output, ex.lang)
                back = self.parse_output(text, ex.lang)
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
        chunks, size = [], 0
        try:
            for chunk in self._compiled[(lang, key)].generate(**ctx):
                size += len(chunk)
                if size > MAX_RENDER_CHARS:
                    raise self._err(path, f"rendering produced more than {MAX_RENDER_CHARS} characters")
                chunks.append(chunk)
        except TemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - sandbox violations, undefined names, filters' own errors
            raise self._err(path, f"task {self.name!r} v{self.version} failed to render {'.'.join(map(str, path))}: {type(e).__name__}: {e}") from None
        return "".join(chunks).strip()

    def _messages(self, inputs: dict[str, Any], lang: str, variant: int) -> tuple[str, str]:
        ctx = {**inputs, "lang": lang}
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

    # ------------------------------------------------------------------ output contract

    def choices(self, lang: str = "en") -> list[str] | None:
        """The exact strings a label task's answer must be one of (for decode-time constraints)."""
        if self.output.kind != "label":
            return None
        self._prompt(lang)
        shown = self.output.display.get(lang, {})
        return [shown.get(label, label) for label in self.output.labels or []]

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema of a json task's answer (a copy), else None."""
        return json.loads(json.dumps(self.output.schema_)) if self.output.kind == "json" else None

    def output_schema(self, lang: str = "en") -> dict[str, Any]:
        """JSON schema of the typed output value, for any kind (API docs)."""
        if self.output.kind == "label":
            return {"type": "string", "enum": list(self.output.labels or [])}
        if self.output.kind == "json":
            return self.json_schema() or {}
        return {"type": "string", "maxLength": self.output.max_length}

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
        kind = self.output.kind
        if kind == "label":
            if value not in (self.output.labels or []):
                raise ContractError(f"{value!r} is not one of the labels {self.output.labels}", raw=repr(value), task=self.name)
            return self.output.display.get(lang, {}).get(value, value)
        if kind == "json":
            self._check_json(value, raw=repr(value))
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if not isinstance(value, str):
            raise ContractError(f"a text output must be a string, got {type(value).__name__}", raw=repr(value), task=self.name)
        self._check_text(value.strip(), raw=value)
        return value.strip()

    def parse_output(self, text: str, lang: str = "en") -> Any:
        """The typed value of a model answer, or ``ContractError`` (with ``.raw``) if it breaks the contract.

        Labels: the display string for ``lang`` (or the canonical label, or an alias), compared
        case-insensitively after stripping whitespace, quotes and a final full stop. JSON: the
        answer may be wrapped in whitespace or a Markdown code fence; the JSON itself must parse
        completely and match the schema. Text: non-empty, at most ``max_length`` characters.
        """
        self._prompt(lang)
        if not isinstance(text, str):
            raise ContractError(f"expected text, got {type(text).__name__}", raw=repr(text), task=self.name)
        kind = self.output.kind
        if kind == "label":
            label = self._label_lookup[lang].get(_norm_label(text))
            if label is None:
                raise ContractError(f"answer is not one of {self.choices(lang)}", raw=text, task=self.name)
            return label
        if kind == "json":
            body = text.strip()
            fenced = _FENCE.match(body)
            if fenced:
                body = fenced.group(1).strip()
            try:
                value = json.loads(body)
            except json.JSONDecodeError as e:
                raise ContractError(f"answer is not valid JSON ({e.msg} at char {e.pos})", raw=text, task=self.name) from None
            self._check_json(value, raw=text)
            return value
        value = text.strip()
        self._check_text(value, raw=text)
        return value

    def _check_json(self, value: Any, raw: str) -> None:
        err = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if err is not None:
            where = "/".join(map(str, err.absolute_path)) or "(root)"
            raise ContractError(f"JSON does not match the schema at {where}: {err.message}", raw=raw, task=self.name)

    def _check_text(self, value: str, raw: str) -> None:
        if not value:
            raise ContractError("answer is empty", raw=raw, task=self.name)
        if self.output.max_length is not None and len(value) > self.output.max_length:
            raise ContractError(f"answer is {len(value)} characters; the maximum is {self.output.max_length}", raw=raw, task=self.name)

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
