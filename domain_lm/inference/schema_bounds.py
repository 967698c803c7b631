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


def text_regex(max_chars: int) -> str:
    """A regex for a non-empty answer of at most ``max_chars`` characters (first one not blank)."""
    return r"\S[\s\S]{0,%d}" % max(0, max_chars - 1)
