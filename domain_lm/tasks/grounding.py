"""Grounded answers: values a JSON answer must copy from the task's input, at decode time and after.

A template's JSON schema marks a field as grounded with the ``x-grounded`` keyword (validators
ignore ``x-`` keywords, so the schema stays valid JSON Schema)::

    text:     {type: string, x-grounded: {input: text, kind: span}}      # entity text, evidence
    value:    {type: number, x-grounded: {input: text, kind: number}}    # a copied figure

Pure functions use it:

* ``specialise(schema, inputs, lang)``: the per-request schema an engine decodes under. Each
  grounded string becomes an ``enum`` of candidate spans of the input, each grounded number a
  choice of the numbers written in it, and the ``x-grounded`` keywords are removed. Candidate
  sets are bounded (``Budget``); when the per-request grammar would be slow to compile, the
  template's own schema is returned and the plan says the answer must be verified.
* ``ungrounded(value, schema, inputs)``: JSON paths of grounded values that do not occur in the
  input (verification after decoding, the eval metric); ``require_grounded`` raises on them.
* ``locate(value, schema, inputs)``: the answer with character offsets added to each object that
  holds a grounded span (``start``/``end``, end exclusive).
* ``grounded_fields(schema)``: the grounded fields, checked (for template loading).

A *span* occurs in the input when it is a verbatim substring. Decode-time candidates are a subset:
token-aligned, trimmed substrings of at most ``max_words`` tokens that do not cross a sentence,
line or table-cell boundary, plus (``sentences: true``) whole lines, sentences and clauses. A token
is a run of letters/digits (``1,496.5``, ``U.S`` and ``anti-money`` are one token), one CJK
character, or one other symbol (``'`` and ``&`` too: ``Bank`` is a span of ``Bank's``).

A *number* occurs in the input when some numeral there has the same value after removing
thousands separators, a currency sign or a percent sign, with full-width digits read as ASCII;
a scale word is not part of it (``$902 million`` holds 902); ``(1,234)`` holds 1234 and -1234.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domain_lm.tasks.errors import ContractError

KEYWORD = "x-grounded"

#: Default longest n-gram (tokens) offered for a span, by language. Chinese tokens are characters:
#: 12 covers 97% of CLUENER entities; 6 words cover 99.4% of FIN NER entities.
DEFAULT_MAX_WORDS = {"en": 6, "zh": 12}
FALLBACK_MAX_WORDS = 6

# Subschema keywords walked in parallel with a value (no ``$ref``: templates inline their schemas).
_BRANCHES = ("anyOf", "oneOf", "allOf")


class GroundingError(ValueError):
    """An ``x-grounded`` keyword is malformed, or names an input that is missing or not text."""


class UngroundedError(ContractError):
    """An answer quotes text or numbers its input does not hold; ``paths`` name them.

    ``value`` is the parsed answer (offsets added where its spans do occur), so an eval can score
    what the model said, the ungrounded parts counting as wrong."""

    def __init__(self, paths: list[str], raw: str, task: str | None = None, value: Any = None) -> None:
        self.paths = paths
        self.value = value
        super().__init__(f"answer is not grounded in the input at {', '.join(paths)}", raw=raw, task=task)

    def with_task(self, task: str) -> "UngroundedError":
        return UngroundedError(self.paths, raw=self.raw, task=task, value=self.value)


class Grounding(BaseModel):
    """The value of an ``x-grounded`` keyword."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1, description="The input field the value is copied from.")
    kind: Literal["span", "number"] = Field(description="span: a verbatim substring; number: a numeral of the input.")
    max_words: int | None = Field(None, ge=1, le=64, description="span: longest n-gram (tokens) offered at decode time.")
    sentences: bool = Field(False, description="span: also offer whole lines, sentences and clauses (evidence).")
    offsets: tuple[str, str] | None = Field(("start", "end"), description="span: keys ``locate`` adds to the enclosing object.")
    overflow: Literal["verify", "shortest"] = Field(
        "verify",
        description="When the candidates pass the budget: verify: the whole answer is checked after decoding instead; "
        "shortest: offer the shortest ones that fit (a short field such as a period stays enforced on a long input).",
    )

    @field_validator("offsets")
    @classmethod
    def _distinct(cls, v: tuple[str, str] | None) -> tuple[str, str] | None:
        if v is not None and (v[0] == v[1] or not v[0] or not v[1]):
            raise ValueError("offsets must be two different non-empty keys")
        return v


class GroundedField(BaseModel):
    """One grounded node of a schema; ``path`` is JSONPath-like with ``[*]`` for array items."""

    model_config = ConfigDict(frozen=True)

    path: str
    grounding: Grounding
    parent_key: str | None = None  # the property name when the node is an object property


class Budget(BaseModel):
    """Bounds on decode-time candidate sets, so a grammar compiles in tens of milliseconds.

    xgrammar's compile time grows with the total characters of enum literals (about 6 us per
    character with a 49k-token vocabulary on 2 CPU cores; see bench/grounding_bench.py). The
    defaults enforce 97% of TAT-QA and all KPI-EDGAR / FiNER-ORD / FIN NER requests at decode time
    (evidence and period spans together), compiling in 40 ms (median) to 150 ms (p90) for TAT-QA;
    with the extraction period's ``overflow: shortest``, all 256 TAT-QA span questions.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_chars: int = Field(24000, ge=0, description="Total characters of all candidate literals of one request.")
    max_candidates: int = Field(3000, ge=1, description="Candidates of one field.")
    max_free_length: int = Field(0, ge=0, description="Longest maxLength a free (not grounded) string may keep in a specialised schema.")


class FieldPlan(BaseModel):
    """How one grounded field is handled for one request."""

    model_config = ConfigDict(frozen=True)

    path: str
    input: str
    kind: str
    enforced: bool  # an enum constrains it at decode time; else verify after decoding
    candidates: int  # candidates found (0 when the budget stopped counting)
    chars: int
    reason: str | None = None  # why it is verification-only
    cut: bool = False  # enforced with only the shortest candidates that fit the budget (``overflow: shortest``)


class Specialised(BaseModel):
    """``specialise``'s result: the schema for the engine and what it enforces."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    schema_: dict[str, Any] = Field(alias="schema")
    fields: list[FieldPlan]

    @property
    def fully_enforced(self) -> bool:
        """Every grounded field is constrained at decode time (no verification needed)."""
        return all(f.enforced for f in self.fields)


# --------------------------------------------------------------------------- schema walking


@dataclass(frozen=True)
class _Site:
    """A schema node carrying the keyword (the node itself, not a copy), where it sits, and the
    object schema it is a property of."""

    node: dict[str, Any]
    path: str
    parent_key: str | None
    parent: dict[str, Any] | None


def _sites(schema: Any) -> list[_Site]:
    """Every keyword-carrying node reachable through properties, items, prefixItems and branches."""
    out: list[_Site] = []

    def walk(node: Any, path: str, key: str | None, parent: dict[str, Any] | None) -> None:
        if not isinstance(node, dict):
            return
        if KEYWORD in node:
            out.append(_Site(node, path, key, parent))
        for k, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{k}", k, node)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[*]", None, None)
        for i, sub in enumerate(node.get("prefixItems") or []):
            walk(sub, f"{path}[{i}]", None, None)
        for b in _BRANCHES:
            for sub in node.get(b) or []:
                walk(sub, path, key, parent)

    walk(schema, "$", None, None)
    return out


def grounded_fields(schema: dict[str, Any], input_names: set[str] | None = None) -> list[GroundedField]:
    """The grounded fields of ``schema``, in schema order; ``GroundingError`` names a bad one.

    Checks each keyword, that ``kind`` fits the node's type, that ``input`` is one of
    ``input_names`` when given, that no keyword sits where values are not walked (``$defs``,
    ``additionalProperties``), and that two spans of one object do not share offset keys.
    """
    return [f for f, _ in _checked_sites(schema, input_names)]


def _checked_sites(schema: dict[str, Any], input_names: set[str] | None = None) -> list[tuple[GroundedField, _Site]]:
    sites = _sites(schema)
    if sum(1 for _ in _all_keywords(schema)) != len(sites):
        raise GroundingError(f"{KEYWORD} is supported under properties, items, prefixItems, anyOf, oneOf and allOf only; "
                             "move it out of $defs, additionalProperties and the like")
    out: list[tuple[GroundedField, _Site]] = []
    offsets: dict[tuple[int, str], str] = {}
    for site in sites:
        try:
            g = Grounding.model_validate(site.node[KEYWORD])
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
            raise GroundingError(f"{site.path}: bad {KEYWORD} ({msgs})") from None
        want = {"string"} if g.kind == "span" else {"number", "integer"}
        if not _types(site.node) & (want | {"any"}):
            raise GroundingError(f"{site.path}: {KEYWORD} kind {g.kind!r} needs a node of type {' or '.join(sorted(want))}")
        if input_names is not None and g.input not in input_names:
            raise GroundingError(f"{site.path}: {KEYWORD} names input {g.input!r}, which the task does not declare "
                                 f"(inputs: {', '.join(sorted(input_names))})")
        if g.kind == "span" and g.offsets is not None and site.parent is not None:
            for key in g.offsets:
                other = offsets.setdefault((id(site.parent), key), site.path)
                if other != site.path:
                    raise GroundingError(f"{site.path} and {other} both put offset key {key!r} on one object; "
                                         "give one of them other `offsets`")
        out.append((GroundedField(path=site.path, grounding=g, parent_key=site.parent_key), site))
    return out


def _all_keywords(node: Any) -> Iterator[None]:
    if isinstance(node, dict):
        if KEYWORD in node:
            yield None
        for v in node.values():
            yield from _all_keywords(v)
    elif isinstance(node, list):
        for v in node:
            yield from _all_keywords(v)


def _types(node: dict[str, Any]) -> set[str]:
    """Types a node (or any of its branches) admits; ``any`` when it does not say."""
    t = node.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return set(t)
    branches = [b for key in _BRANCHES for b in node.get(key) or [] if isinstance(b, dict)]
    if branches:
        return set().union(*(_types(b) for b in branches))
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        return {_json_type(v) for v in values}
    return {"any"}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return "string" if isinstance(v, str) else "object"


def strip(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` without ``x-grounded`` keywords (what an engine or a client sees)."""
    out = copy.deepcopy(schema)
    _strip(out)
    return out


def _strip(node: Any) -> None:
    if isinstance(node, dict):
        node.pop(KEYWORD, None)
        for v in node.values():
            _strip(v)
    elif isinstance(node, list):
        for v in node:
            _strip(v)


# --------------------------------------------------------------------------- candidates

# One CJK ideograph (BMP blocks and the supplementary planes' ideographs).
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# A word: letters/digits, joined by "." "," or "-" between them (1,496.5  U.S  anti-money). An
# apostrophe or "&" is a token of its own, so "Bank" is a span of "Bank's" and "AT&T" a 3-token span.
_LETTERS = rf"(?:(?![{_CJK}])[^\W_])+"
_WORD = rf"{_LETTERS}(?:[.,-]{_LETTERS})*"
#: Tokens: whitespace runs, single CJK characters, words, single other symbols (in that order of trial).
TOKEN = re.compile(rf"(?P<space>\s+)|(?P<cjk>[{_CJK}])|(?P<word>{_WORD})|(?P<sym>\S)")
#: Tokens that end a sentence (kept at the end of the left segment).
_TERMINATORS = frozenset(".!?;。！？；")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr inc corp co ltd llc plc no vs etc "
                           "jan feb mar apr jun jul aug sep sept oct nov dec".split())
#: Tokens that separate segments and belong to neither side (table cells, Chinese clause marks).
_SEPARATORS = frozenset("|，、：")
#: Clause marks inside a sentence (for ``sentences: true`` units).
_CLAUSE = re.compile(r"[,:](?=\s)\s*|;\s*|[，；：、]")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])")
#: A span may start with a word or one of these, and end with a word or one of the closers.
_OPENERS = frozenset("$€£¥(（“\"'‘《「【#")
_CLOSERS = frozenset(".)）%％”\"'’》」】€£¥")  # a currency sign may follow the amount (40€)


@dataclass(frozen=True, slots=True)
class _Token:
    start: int
    end: int
    text: str
    kind: str  # space, cjk, word or sym


def _segments(text: str) -> list[list[_Token]]:
    """Non-space tokens of ``text`` grouped into runs no n-gram crosses."""
    segments: list[list[_Token]] = [[]]
    tokens = [_Token(m.start(), m.end(), m.group(), m.lastgroup or "sym") for m in TOKEN.finditer(text)]
    for i, tok in enumerate(tokens):
        if tok.kind == "space":
            if "\n" in tok.text and segments[-1]:
                segments.append([])
            continue
        if tok.kind == "sym" and tok.text in _SEPARATORS:
            segments.append([])
            continue
        segments[-1].append(tok)
        if tok.kind == "sym" and tok.text in _TERMINATORS and (tok.text != "." or _ends_sentence(tokens, i)):
            segments.append([])
    return [s for s in segments if s]


def _ends_sentence(tokens: list[_Token], i: int) -> bool:
    """The "." at ``tokens[i]`` ends a sentence: before a space or the end, and not after an
    initial or a common abbreviation ("Sidney X. Huang", "Acme Inc. said")."""
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    prev = tokens[i - 1] if i > 0 else None
    if nxt is not None and nxt.kind != "space":
        return False
    return prev is None or not (prev.kind == "word" and (len(prev.text) == 1 or prev.text.lower() in _ABBREVIATIONS))


def _can_start(tok: _Token) -> bool:
    return tok.kind != "sym" or tok.text in _OPENERS


def _can_end(tok: _Token) -> bool:
    return tok.kind != "sym" or tok.text in _CLOSERS


def span_candidates(text: str, max_words: int, sentences: bool = False, max_length: int | None = None) -> Iterator[str]:
    """Decode-time candidate spans of ``text``, each once, shortest n-grams first.

    A generator, so a caller that stops at a budget never builds the rest (a 6,000-character
    input has about 6,000 x ``max_words`` n-grams).
    """
    seen: set[str] = set()

    def fresh(s: str) -> bool:
        ok = bool(s) and s not in seen and (max_length is None or len(s) <= max_length)
        seen.add(s)
        return ok

    segments = _segments(text)
    for n in range(1, max_words + 1):
        for seg in segments:
            for i in range(len(seg) - n + 1):
                first, last = seg[i], seg[i + n - 1]
                if _can_start(first) and _can_end(last):
                    s = text[first.start : last.end]
                    if fresh(s):
                        yield s
    if sentences:
        for unit in _units(text):
            if fresh(unit):
                yield unit


def covering_candidate(span: str, text: str, max_words: int, sentences: bool = True) -> str | None:
    """The shortest decode-time candidate of ``text`` that contains ``span``, else None.

    For SFT targets: a gold evidence string cut mid-clause (KPI-EDGAR's are) is not among the
    candidates an enforced request offers, so the target should be the candidate that covers it.
    """
    if not span or span not in text:
        return None
    covering = [c for c in span_candidates(text, max_words, sentences) if span in c]
    return min(covering, key=len, default=None)


def decodable(value: Any, schema: dict[str, Any], inputs: dict[str, Any], lang: str = "en") -> Any:
    """A copy of ``value`` whose grounded spans an enforced request could not write (not among the
    decode-time candidates: an evidence cut mid-clause) are replaced by ``covering_candidate`` when
    their field offers whole sentences; other values are kept. For SFT targets: the model is trained
    on answers it can produce under ``specialise``'s schema."""
    out = copy.deepcopy(value)
    offered: dict[tuple[str, int], set[str]] = {}
    for path, v, g, parent in _grounded_values(out, schema):
        text = inputs.get(g.input)
        if g.kind != "span" or not g.sentences or parent is None or not isinstance(text, str) or not isinstance(v, str):
            continue
        words = g.max_words or DEFAULT_MAX_WORDS.get(lang.split("-")[0], FALLBACK_MAX_WORDS)
        cands = offered.setdefault((g.input, words), set(span_candidates(text, words, sentences=True)))
        if v not in cands:
            snapped = covering_candidate(v, text, words)
            if snapped is not None:
                parent[path.rsplit(".", 1)[-1]] = snapped
    return out


def _units(text: str) -> Iterator[str]:
    """Lines, the sentences of each line and the clauses of each sentence, trimmed."""
    for line in text.splitlines():
        yield line.strip()
        for sentence in _SENTENCE.split(line):
            yield sentence.strip()
            for clause in _CLAUSE.split(sentence):
                yield clause.strip().rstrip(".;。；")


_FULLWIDTH = str.maketrans("０１２３４５６７８９．，－＋", "0123456789.,-+")
_NUMERAL = re.compile(r"(?<![\d.])(?P<neg>[-−])?(?P<cur>[$€£¥￥])?\s?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d])")


def number_candidates(text: str) -> list[int | float]:
    """The numbers written in ``text`` as JSON numbers, each once, in order of first appearance.

    ``5,687`` -> 5687, ``$1,496.5`` -> 1496.5, ``1.85%`` -> 1.85, ``２０２２`` -> 2022, ``-3.2`` and
    ``−3.2`` -> -3.2, ``(1,234)`` -> 1234 and -1234 (accounting negative). An integer numeral gives an
    int, a decimal one a float (``27.0`` stays 27.0, so the literal the model writes is the input's).
    """
    plain = text.translate(_FULLWIDTH)  # one character for one: offsets and boundaries unchanged
    out: dict[str, int | float] = {}
    for m in _NUMERAL.finditer(plain):
        raw = m.group("num").replace(",", "")
        value: int | float = float(raw) if "." in raw else int(raw)
        before = plain[m.start() - 1] if m.start() > 0 else ""
        negative = m.group("neg") is not None and not (before.isalnum())
        after = plain[m.end() :].lstrip(" %")
        accounting = before == "(" and after.startswith(")")
        for v in ([-value] if negative else [value]) + ([-value] if accounting else []):
            out.setdefault(_literal(v), v)
    return list(out.values())


def _literal(v: int | float) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def number_occurs(value: int | float, text: str) -> bool:
    """``value`` is one of the numbers written in ``text`` (see ``number_candidates``)."""
    return any(float(c) == float(value) for c in number_candidates(text))


# --------------------------------------------------------------------------- specialise


def specialise(schema: dict[str, Any], inputs: dict[str, Any], lang: str = "en", budget: Budget | None = None) -> Specialised:
    """The per-request schema: grounded fields constrained to the input's spans and numbers.

    Each field's candidates are filtered by its node's bounds (``maxLength``, ``minimum``, ...); a
    field without a candidate keeps only its other alternatives (``null``; an array of such items
    must be empty). All or nothing: when a field's candidates pass ``budget``, when the schema would
    admit no value, or when it keeps a free bounded string (xgrammar expands ``maxLength`` one
    position per character, ~20 ms each, on every compile), the result is the template's own schema
    without the keyword, identical for every request so the engine's grammar cache serves it, and
    every field is marked for verification after decoding with the reason.
    ``GroundingError`` if the keyword is malformed or a named input is missing or not text.
    """
    budget = budget or Budget()
    out = copy.deepcopy(schema)
    sites = _checked_sites(out)
    plans: dict[int, FieldPlan] = {}
    reason: str | None = None
    left = budget.max_chars
    # Numbers first: their enums are short, and a long span list should not crowd them out.
    for i in sorted(range(len(sites)), key=lambda i: sites[i][0].grounding.kind != "number"):
        f, site = sites[i]
        g = f.grounding
        cands, cut = _field_candidates(g, site.node, _input_text(inputs, f), lang, budget.max_candidates, left)
        if cands is None:
            why = f"{f.path}: candidates exceed the budget ({budget.max_candidates} per field, {left} characters left)"
            reason = reason or why
            plans[i] = FieldPlan(path=f.path, input=g.input, kind=g.kind, enforced=False, candidates=0, chars=0, reason=why)
            continue
        chars = sum(len(_json_literal(c)) for c in cands)
        left -= chars
        _constrain(site.node, cands)
        plans[i] = FieldPlan(path=f.path, input=g.input, kind=g.kind, enforced=True, candidates=len(cands), chars=chars, cut=cut)
    if reason is None and _prune_empty(out):
        reason = "a grounded field has no candidate in the input and the schema needs a value there"
    if reason is None:
        slow = _free_bounded_strings(out, budget.max_free_length)
        if slow:
            reason = f"{slow[0]} is a free string bounded by maxLength: too slow to compile per request; ground it or drop its bound"
    if reason is not None:
        fields = [plans[i].model_copy(update={"enforced": False, "reason": plans[i].reason or reason}) for i in range(len(sites))]
        return Specialised(schema=strip(schema), fields=fields)
    _strip(out)
    return Specialised(schema=out, fields=[plans[i] for i in range(len(sites))])


def _free_bounded_strings(node: Any, max_length: int, path: str = "$") -> list[str]:
    """Paths of string nodes without an enum whose ``maxLength`` passes ``max_length``."""
    if isinstance(node, list):
        return [p for sub in node for p in _free_bounded_strings(sub, max_length, path)]
    if not isinstance(node, dict):
        return []
    found = []
    if "string" in _types(node) and "enum" not in node and "const" not in node and node.get("maxLength", 0) > max_length:
        found.append(path)
    for k, sub in (node.get("properties") or {}).items():
        found += _free_bounded_strings(sub, max_length, f"{path}.{k}")
    for key, suffix in (("items", "[*]"), ("prefixItems", "[*]"), ("anyOf", ""), ("oneOf", ""), ("allOf", "")):
        if isinstance(node.get(key), (dict, list)):
            found += _free_bounded_strings(node[key], max_length, path + suffix)
    return found


def _input_text(inputs: dict[str, Any], f: GroundedField) -> str:
    name = f.grounding.input
    if name not in inputs:
        raise GroundingError(f"{f.path} is grounded in input {name!r}, which the request does not give")
    text = inputs[name]
    if not isinstance(text, str):
        raise GroundingError(f"{f.path} is grounded in input {name!r}, which is {type(text).__name__}, not text")
    return text


def _field_candidates(
    g: Grounding, node: dict[str, Any], text: str, lang: str, max_count: int, max_chars: int
) -> tuple[list[Any] | None, bool]:
    """(candidates some branch of ``node`` admits, whether they were cut): None when they pass
    ``max_count`` / ``max_chars``, or with ``overflow: shortest`` the ones before that (shortest first)."""
    branches = _value_branches(node)
    if g.kind == "number":
        found: Iterator[Any] = iter(number_candidates(text))
    else:
        words = g.max_words or DEFAULT_MAX_WORDS.get(lang.split("-")[0], FALLBACK_MAX_WORDS)
        longest = max((b.get("maxLength", len(text)) for b in branches), default=len(text))
        found = span_candidates(text, words, g.sentences, longest)
    cands: list[Any] = []
    chars = 0
    for c in found:
        if not any(_fits(b, c) for b in branches):
            continue
        size = len(_json_literal(c))
        if len(cands) + 1 > max_count or chars + size > max_chars:
            return (cands, True) if g.overflow == "shortest" and g.kind == "span" else (None, False)
        cands.append(c)
        chars += size
    return cands, False


def _value_branches(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The node itself, or its ``anyOf``/``oneOf`` branches that admit a string or a number."""
    subs = [b for key in ("anyOf", "oneOf") for b in node.get(key) or [] if isinstance(b, dict)]
    if not subs:
        return [node]
    return [b for b in subs if _types(b) & {"string", "number", "integer", "any"}]


def _fits(node: dict[str, Any], c: Any) -> bool:
    """``c`` (a candidate string or number) satisfies the node's type and bounds."""
    types = _types(node)
    if isinstance(c, str):
        return bool(types & {"string", "any"}) and node.get("minLength", 0) <= len(c) <= node.get("maxLength", len(c))
    if not types & {"number", "any"} and not ("integer" in types and isinstance(c, int)):
        return False
    if "minimum" in node and c < node["minimum"] or "maximum" in node and c > node["maximum"]:
        return False
    if "exclusiveMinimum" in node and c <= node["exclusiveMinimum"]:
        return False
    return not ("exclusiveMaximum" in node and c >= node["exclusiveMaximum"])


def _json_literal(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


_EMPTY = "x-grounded-empty"  # marks a branch left with no candidate until _prune_empty removes it
_FREE_KEYS = ("type", "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _constrain(node: dict[str, Any], cands: list[Any]) -> None:
    """Replace each free string/number branch of ``node`` by a choice of the candidates it admits (in place)."""
    for target in _value_branches(node):
        keep = [c for c in cands if _fits(target, c)]
        nullable = "null" in _types(target)  # {type: [string, null]} keeps its null
        for key in _FREE_KEYS:
            target.pop(key, None)
        if not keep:
            target.update({"type": "null"} if nullable else {_EMPTY: True})
        elif isinstance(keep[0], str):
            target["enum"] = keep + [None] * nullable
        else:
            target.update(_number_choice(keep, nullable))


def _number_choice(values: list[int | float], nullable: bool) -> dict[str, Any]:
    """A schema admitting exactly ``values``, written so xgrammar keeps each literal as the input has it.

    xgrammar 0.2.8 prints a float ``enum`` member with 17 significant digits (85.6 becomes
    "85.599999999999994", a literal no fine-tuned model would write), but compiles a
    ``minimum == maximum`` range to the exact digits (its ranges keep 6 decimals, hence the limit).
    """
    exact = [v for v in values if isinstance(v, int) or _decimals(v) > 6]
    ranges = [v for v in values if not (isinstance(v, int) or _decimals(v) > 6)]
    if not ranges:
        return {"enum": exact + [None] * nullable}
    choices: list[dict[str, Any]] = [{"enum": exact}] if exact else []
    choices += [{"type": "number", "minimum": v, "maximum": v} for v in ranges]
    return {"anyOf": choices + [{"type": "null"}] * nullable}


def _decimals(v: float) -> int:
    text = repr(v)
    return 99 if "e" in text else len(text.split(".")[1])


def _prune_empty(node: Any) -> bool:
    """Drop branches marked empty; True when ``node`` itself can hold no value (in place)."""
    if isinstance(node, list):
        return any([_prune_empty(n) for n in node])
    if not isinstance(node, dict):
        return False
    if node.pop(_EMPTY, False):
        return True
    empty = False
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            node[key] = [b for b in node[key] if not _prune_empty(b)]
            empty |= not node[key]
    props = node.get("properties") or {}
    for key in list(props):
        if _prune_empty(props[key]):
            if key in (node.get("required") or []):
                empty = True
            else:
                props.pop(key)
    if isinstance(node.get("items"), dict) and _prune_empty(node["items"]):
        node["maxItems"] = 0  # no item can be written: only the empty array remains
        empty |= node.get("minItems", 0) > 0
    return empty


# --------------------------------------------------------------------------- a grammar instead of enums


def grounded_grammar(
    schema: dict[str, Any], inputs: dict[str, Any], separators: tuple[str, str] = (",", ":"), max_input_tokens: int = 2000
) -> str | None:
    """xgrammar EBNF for the answer, each grounded span accepting exactly the input's trimmed,
    token-aligned substrings of any length; None (verify after decoding) when the schema keeps a
    free bounded string or an input passes ``max_input_tokens`` tokens (whitespace runs count; 2,000
    are about 6,000 English or 2,000 Chinese characters, ~0.2 s to compile on 2 cores).

    The alternative to ``specialise`` for engines that take a grammar (vLLM's
    ``StructuredOutputsParams(grammar=...)``): its size grows with the input's length, not with
    length x ``max_words``, and it offers every span (KPI-EDGAR evidence is cut mid-clause), but a
    span's ``maxLength`` is not enforced (check it after decoding). Grounded numbers are constrained
    as in ``specialise``. The JSON around the spans is xgrammar's own grammar for the schema, with a
    placeholder string where each span goes; ``separators`` as in ``compile_json_schema``
    (both engines write compact JSON, the default).
    """
    import xgrammar as xgr

    out = copy.deepcopy(schema)
    rules: dict[str, str] = {}  # input name -> rule; fields grounded in one input share its automaton
    for f, site in _checked_sites(out):
        g, text = f.grounding, _input_text(inputs, f)
        if g.kind == "number":
            _constrain(site.node, [v for v in number_candidates(text) if any(_fits(b, v) for b in _value_branches(site.node))])
            continue
        tokens = _tokens(text)
        if len(tokens) > max_input_tokens:
            return None
        rule = rules.setdefault(g.input, f"grounded_{len(rules)}")
        _constrain(site.node, [_placeholder(rule)] if any(t.strip() for t in tokens) else [])
    if _prune_empty(out) or _free_bounded_strings(out, 0):
        return None
    _strip(out)
    ebnf = str(xgr.Grammar.from_json_schema(json.dumps(out), any_whitespace=False, separators=separators))
    for name, rule in rules.items():
        literal = json.dumps(json.dumps(_placeholder(rule)))  # how xgrammar prints the placeholder string
        if literal in ebnf:  # absent when the span had no candidate and its branch was dropped
            ebnf = ebnf.replace(literal, rule) + "\n" + substring_rules(rule, inputs[name])
    if "__grounded_" in ebnf:
        raise RuntimeError("xgrammar printed a grounded placeholder in an unexpected form; grounded_grammar needs updating")
    return ebnf


def _placeholder(rule: str) -> str:
    return f"__{rule}__"


def _tokens(text: str) -> list[str]:
    return [m.group() for m in TOKEN.finditer(text)]


def substring_rules(rule: str, text: str) -> str:
    """EBNF rules: ``rule`` is a JSON string holding a trimmed, token-aligned substring of ``text``
    (starting and ending as ``span_candidates`` allow), one rule per state of the suffix automaton
    of the token sequence (at most 2 x tokens states; every string of a state ends with one token)."""
    tokens = _tokens(text)
    nxt = _suffix_automaton(tokens)
    last: dict[int, str] = {target: tok for d in nxt for tok, target in d.items()}
    lines = [f'{rule} ::= "\\"" {rule}_0 "\\""']
    for state, d in enumerate(nxt):
        alts = [f"{_ebnf_literal(tok)} {rule}_{target}" for tok, target in d.items() if state or _token_starts(tok)]
        if state and _token_ends(last[state]):
            alts.append('""')
        lines.append(f"{rule}_{state} ::= " + " | ".join(alts or ['""']))
    return "\n".join(lines)


def _token_starts(tok: str) -> bool:
    return not tok.isspace() and (len(tok) > 1 or tok in _OPENERS or TOKEN.fullmatch(tok).lastgroup != "sym")  # type: ignore[union-attr]


def _token_ends(tok: str) -> bool:
    return not tok.isspace() and (len(tok) > 1 or tok in _CLOSERS or TOKEN.fullmatch(tok).lastgroup != "sym")  # type: ignore[union-attr]


def _ebnf_literal(tok: str) -> str:
    """The EBNF literal for a token as it appears inside a JSON string (quotes, newlines escaped)."""
    return json.dumps(json.dumps(tok, ensure_ascii=False)[1:-1], ensure_ascii=False)


def _suffix_automaton(tokens: list[str]) -> list[dict[str, int]]:
    """Transitions of the suffix automaton of a token sequence (state 0 is the start; Blumer et al. 1985)."""
    nxt: list[dict[str, int]] = [{}]
    link, length, last = [-1], [0], 0
    for tok in tokens:
        cur = len(nxt)
        nxt.append({})
        link.append(-1)
        length.append(length[last] + 1)
        p = last
        while p != -1 and tok not in nxt[p]:
            nxt[p][tok] = cur
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = nxt[p][tok]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                link.append(link[q])
                length.append(length[p] + 1)
                while p != -1 and nxt[p].get(tok) == q:
                    nxt[p][tok] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        last = cur
    return nxt


# --------------------------------------------------------------------------- verification

#: (path, value, grounding, enclosing object) of one grounded value of an answer.
_Found = tuple[str, Any, Grounding, "dict[str, Any] | None"]


def _grounded_values(value: Any, schema: dict[str, Any]) -> list[_Found]:
    """Each grounded string/number of ``value``, in document order (schema walked alongside)."""
    groundings = {id(site.node): f.grounding for f, site in _checked_sites(schema)}
    out: list[_Found] = []
    seen: set[str] = set()

    def walk(v: Any, node: Any, path: str, parent: dict[str, Any] | None) -> None:
        if not isinstance(node, dict):
            return
        g = groundings.get(id(node))
        if g is not None and path not in seen and not isinstance(v, bool):
            if (g.kind == "span" and isinstance(v, str)) or (g.kind == "number" and isinstance(v, (int, float))):
                seen.add(path)
                out.append((path, v, g, parent))
        if isinstance(v, dict):
            for k, sub in (node.get("properties") or {}).items():
                if k in v:
                    walk(v[k], sub, f"{path}.{k}", v)
        if isinstance(v, list):
            prefix = node.get("prefixItems") or []
            for i, item in enumerate(v):
                walk(item, prefix[i] if i < len(prefix) else node.get("items"), f"{path}[{i}]", None)
        for b in _BRANCHES:
            for sub in node.get(b) or []:
                walk(v, sub, path, parent)

    walk(value, schema, "$", None)
    return out


def ungrounded(value: Any, schema: dict[str, Any], inputs: dict[str, Any]) -> list[str]:
    """JSON paths (``$[0].text``, ``$.evidence``) of grounded values that do not occur in their input.

    ``null`` is never ungrounded (an answer may say "not stated"); an empty string always is. A
    named input that is missing or not text makes every value grounded in it ungrounded.
    """
    bad = []
    for path, v, g, _ in _grounded_values(value, schema):
        text = inputs.get(g.input)
        if not isinstance(text, str):
            bad.append(path)
        elif g.kind == "span" and not (v and v in text) or g.kind == "number" and not number_occurs(v, text):
            bad.append(path)
    return bad


def grounding_counts(schema: dict[str, Any], answers: Iterable[tuple[Any | None, dict[str, Any]]]) -> dict[str, int]:
    """Counts for an eval report over ``(value, inputs)`` pairs (``value`` None: no valid answer).

    ``ungrounded_answers`` counts answers with at least one ungrounded value; ``grounded_values``
    and ``ungrounded_values`` count the grounded fields' values (nulls are not counted).
    """
    counts = {"answers": 0, "invalid": 0, "ungrounded_answers": 0, "grounded_values": 0, "ungrounded_values": 0}
    for value, inputs in answers:
        counts["answers"] += 1
        if value is None:
            counts["invalid"] += 1
            continue
        total = len(_grounded_values(value, schema))
        bad = len(ungrounded(value, schema, inputs))
        counts["ungrounded_answers"] += bad > 0
        counts["ungrounded_values"] += bad
        counts["grounded_values"] += total - bad
    return counts


def require_grounded(value: Any, schema: dict[str, Any], inputs: dict[str, Any], raw: str, task: str | None = None) -> None:
    """``UngroundedError`` (a ``ContractError`` carrying ``raw`` and the located ``value``) when
    ``ungrounded`` finds anything."""
    bad = ungrounded(value, schema, inputs)
    if bad:
        raise UngroundedError(bad, raw=raw, task=task, value=locate(value, schema, inputs))


def located_counts(schema: dict[str, Any], values: Iterable[Any | None]) -> dict[str, int]:
    """Grounded / ungrounded spans among answers as ``locate`` returned them, without the inputs.

    ``locate`` gives offsets exactly to the spans that occur in their input, so a span whose object
    lacks its offset keys is ungrounded. Spans with ``offsets: null`` or outside an object, and
    numbers, cannot be told apart this way and are not counted; ``None`` values (invalid answers)
    neither. ``ungrounded_answers`` counts answers with at least one ungrounded span.
    """
    counts = {"grounded_spans": 0, "ungrounded_spans": 0, "ungrounded_answers": 0}
    for value in values:
        if value is None:
            continue
        bad = 0
        for _, v, g, parent in _grounded_values(value, schema):
            if g.kind != "span" or g.offsets is None or parent is None or not isinstance(v, str):
                continue
            ok = all(isinstance(parent.get(k), int) for k in g.offsets)
            counts["grounded_spans" if ok else "ungrounded_spans"] += 1
            bad += not ok
        counts["ungrounded_answers"] += bad > 0
    return counts


def locate(value: Any, schema: dict[str, Any], inputs: dict[str, Any]) -> Any:
    """A copy of ``value`` whose objects holding a grounded span get its offsets (``start``/``end``).

    The k-th mention of a string gets its k-th occurrence in the input (entities listed in order of
    appearance get the right ones); mentions beyond the occurrences get the last one. Spans that do
    not occur, spans outside an object and fields with ``offsets: null`` get no offsets.
    """
    out = copy.deepcopy(value)
    mentions: dict[tuple[str, str], int] = {}
    for _, v, g, parent in _grounded_values(out, schema):
        text = inputs.get(g.input)
        if g.kind != "span" or g.offsets is None or parent is None or not isinstance(text, str) or not v:
            continue
        k = mentions.get((g.input, v), 0)
        mentions[(g.input, v)] = k + 1
        start = _nth_occurrence(text, v, k)
        if start is not None:
            parent[g.offsets[0]], parent[g.offsets[1]] = start, start + len(v)
    return out


def _nth_occurrence(text: str, s: str, k: int) -> int | None:
    """Start of the k-th (0-based) non-overlapping occurrence of ``s``, else of the last one."""
    found, pos = None, text.find(s)
    for _ in range(k + 1):
        if pos < 0:
            break
        found, pos = pos, text.find(s, pos + len(s))
    return found


def located_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without the keyword, the offset keys ``locate`` adds declared as optional integers (API docs)."""
    out = copy.deepcopy(schema)
    for f, site in _checked_sites(out):
        g = f.grounding
        if g.kind == "span" and g.offsets is not None and site.parent is not None:
            props = site.parent.setdefault("properties", {})
            for key in g.offsets:
                props[key] = {"type": "integer", "minimum": 0}
    _strip(out)
    return out
