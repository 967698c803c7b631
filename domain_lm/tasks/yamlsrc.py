"""YAML loading that remembers where every node came from, so errors can name file and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from domain_lm.tasks.errors import TemplateError

Path_ = tuple[Any, ...]
#: Largest template file accepted (a template with long few-shot examples is a few kB).
MAX_TEMPLATE_CHARS = 1_000_000


@dataclass(frozen=True)
class NodeMark:
    line: int  # 1-based line to report: the key's line for a mapping value, else the node's
    text_line: int  # 1-based line where a scalar's text starts (after a block indicator "|")


@dataclass(frozen=True)
class SourceMap:
    """Key path (as in a pydantic error ``loc``) -> position of that YAML node."""

    file: str
    marks: dict[Path_, NodeMark] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        """Line of the deepest node on ``path`` that exists in the file (a missing key -> its parent)."""
        path = tuple(path)
        while path not in self.marks and path:
            path = path[:-1]
        m = self.marks.get(path)
        return m.line if m else None

    def text_line(self, path: Path_, template_lineno: int | None) -> int | None:
        """File line of line ``template_lineno`` (1-based) inside a scalar's text."""
        m = self.marks.get(tuple(path))
        if m is None:
            return self.line(path)
        return m.text_line + (template_lineno or 1) - 1

    def error(self, path: Path_, message: str) -> TemplateError:
        return TemplateError(message, file=self.file, line=self.line(path))


def _walk(node: yaml.Node, path: Path_, marks: dict[Path_, NodeMark], file: str, key_line: int | None = None) -> None:
    own = node.start_mark.line + 1
    block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
    marks[path] = NodeMark(line=key_line or own, text_line=own + 1 if block else own)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            if key in seen:
                # PyYAML keeps the last duplicate silently; a second `version:` must not slip through.
                raise TemplateError(f"duplicate key {key!r}", file=file, line=k.start_mark.line + 1)
            seen.add(key)
            _walk(v, path + (key,), marks, file, key_line=k.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (i,), marks, file)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse ``text`` with the safe loader and return the data plus its source map.

    Anchors/aliases are refused: templates arrive over the API, and nested aliases ("billion
    laughs") would make every later walk over the data exponential.
    """
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is {len(text)} characters; the maximum is {MAX_TEMPLATE_CHARS}", file=file)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise TemplateError("YAML anchors and aliases (&name / *name) are not allowed in templates",
                                    file=file, line=event.start_mark.line + 1)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise TemplateError(f"YAML syntax error: {e.problem or e}", file=file, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise TemplateError(f"YAML error: {e}", file=file) from None
    marks: dict[Path_, NodeMark] = {}
    if node is not None:
        _walk(node, (), marks, file)
    return data, SourceMap(file, marks)
