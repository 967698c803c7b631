"""A small template used by the task-template tests (written for the tests, not a bundled task)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "task_templates"

# Line numbers matter: tests assert that errors point at these lines.
MINI = """\
name: mini
version: 1
description: A tiny loan-decision label task for tests.
languages: [en, zh]
metric: classification
inputs:
  text:
    type: string
    max_length: 50
  note:
    type: string
    required: false
output:
  kind: label
  labels: [approve, reject]
  display:
    zh: {approve: 批准, reject: 拒绝}
prompts:
  en:
    system: Answer approve or reject.
    variants:
      - |
        Question: {{ text }}
        {% if note %}Note: {{ note }}{% endif %}
      - "Is it so? {{ text }}"
  zh:
    variants:
      - "问题：{{ text }}"
examples:
  - lang: en
    inputs: {text: "Loan of 5k, income 80k"}
    output: approve
  - lang: en
    inputs: {text: "Loan of 900k, no income"}
    output: reject
  - lang: zh
    inputs: {text: 贷款五千元，年收入八万元}
    output: approve
"""


def mini(**replace: str) -> str:
    """MINI with whole lines replaced: ``mini(**{"    max_length: 50": "    max_length: 0"})``."""
    text = MINI
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)
