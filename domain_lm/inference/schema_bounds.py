"""Bound a JSON schema so constrained decoding always finishes inside its token budget.

A grammar from an unbounded schema lets a weak model write a 10,000-digit number or an endless
string and hit ``max_tokens`` mid-document, which breaks the contract. Adding limits the schema
lacks (string length, array size, number range) keeps every answer valid under the original
schema while making it finite. Pure functions; the engines and ``TaskRunner`` call them.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_MAX_STRING = 96
DEFAULT_MAX_ITEMS = 8
DEFAULT_NUMBER_LIMIT = 1e12


def bound_schema(
    schema: dict[str, Any],
    max_string: int = DEFAULT_MAX_STRING,
    max_items: int = DEFAULT_MAX_ITEMS,
    number_limit: float = DEFAULT_NUMBER_LIMIT,
) -> dict[str, Any]:
    """A copy of ``schema`` with length/size/range limits added where absent (existing ones are kept)."""
    out = copy.deepcopy(schema)
    _bound(out, max_string, max_items, number_limit)
    return out


def _bound(node: Any, max_string: int, max_items: int, number_limit: float) -> None:
    if isinstance(node, list):
        for item in node:
            _bound(item, max_string, max_items, number_limit)
        return
    if not isinstance(node, dict):
        return
    types = node.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if "string" in types and "enum" not in node and "const" not in node and "pattern" not in node and "format" not in node:
        node.setdefault("maxLength", max_string)
    if "array" in types:
        node.setdefault("maxItems", max_items)
    if types & {"number", "integer"}:
        if "minimum" not in node and "exclusiveMinimum" not in node:
            node["minimum"] = -number_limit
        if "maximum" not in node and "exclusiveMaximum" not in node:
            node["maximum"] = number_limit
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        sub = node.get(key)
        if isinstance(sub, dict):
            for child in sub.values():
                _bound(child, max_string, max_items, number_limit)
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        if isinstance(node.get(key), (dict, list)):
            _bound(node[key], max_string, max_items, number_limit)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(node.get(key), list):
            _bound(node[key], max_string, max_items, number_limit)


#: A non-empty answer (first character not blank), any length: what a text contract asks the
#: decoder for. Its length is bounded by ``max_tokens`` and checked after decoding, not in the regex:
#: a bounded repetition compiles to a state per allowed character for every vocabulary token
#: (``text_regex(2000)``: 5.7 s on Gemma 3's 262k vocabulary, past vLLM's 5 s grammar timeout, so a
#: server's first summary request failed; 1.3 s on SmolLM2's 49k), this one to a few (0.04 s).
NON_BLANK_TEXT = r"\S[\s\S]*"


def text_regex(max_chars: int) -> str:
    """A regex for a non-empty answer of at most ``max_chars`` characters (first one not blank).

    Costly to compile for large ``max_chars`` on a large vocabulary (see ``NON_BLANK_TEXT``).
    """
    return r"\S[\s\S]{0,%d}" % max(0, max_chars - 1)


def worst_case_chars(schema: Any) -> int:
    """Longest compact JSON a grammar built from ``schema`` can produce (escapes ignored)."""
    if not isinstance(schema, dict):
        return 4
    if "const" in schema:
        return len(_dumps(schema["const"]))
    if "enum" in schema:
        return max((len(_dumps(v)) for v in schema["enum"]), default=4)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return max((worst_case_chars(s) for s in schema[key]), default=4)
    types = schema.get("type", "object")
    types = types if isinstance(types, list) else [types]
    best = 0
    for t in types:
        if t == "object":
            props = schema.get("properties", {})
            size = 2 + sum(len(k) + 4 + worst_case_chars(v) for k, v in props.items())
        elif t == "array":
            size = 2 + schema.get("maxItems", 64) * (worst_case_chars(schema.get("items", {})) + 1)
        elif t == "string":
            size = schema.get("maxLength", 10_000) + 2
        elif t in ("number", "integer"):
            size = 24
        elif t == "boolean":
            size = 5
        else:
            size = 4
        best = max(best, size)
    return best


def fit_schema(schema: dict[str, Any], budget_chars: int, min_string: int = 8) -> dict[str, Any]:
    """Shrink string lengths and array sizes (halving) until the worst case fits ``budget_chars``.

    Used for a retry after an answer ran out of tokens mid-document: the second attempt is then
    guaranteed to close its JSON (counting at most one character per token).
    """
    out = copy.deepcopy(schema)
    for _ in range(16):
        if worst_case_chars(out) <= budget_chars:
            break
        if not _halve(out, min_string):
            break
    return out


def _halve(node: Any, min_string: int) -> bool:
    changed = False
    if isinstance(node, list):
        for item in node:
            changed |= _halve(item, min_string)
        return changed
    if not isinstance(node, dict):
        return False
    if isinstance(node.get("maxLength"), int) and node["maxLength"] > min_string:
        node["maxLength"] = max(min_string, node["maxLength"] // 2)
        node["minLength"] = min(node.get("minLength", 0), node["maxLength"])
        changed = True
    if isinstance(node.get("maxItems"), int) and node["maxItems"] > 1:
        node["maxItems"] = max(1, node["maxItems"] // 2)
        node["minItems"] = min(node.get("minItems", 0), node["maxItems"])
        changed = True
    for value in node.values():
        if isinstance(value, (dict, list)):
            changed |= _halve(value, min_string)
    return changed


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
