"""Small task templates and preference files for the RLHF tests.

The real bundled templates are used where they exist (``load_real_templates``); the two small
templates here keep the preference tests independent of the bundled wording.
"""

from __future__ import annotations

import json

import pytest

# Two phrasings for the label task and one for the summary task: the pairs' prompts must be one of them.
LABEL_TEMPLATE = """\
name: sentiment
version: 1
description: Sentiment of a bank news sentence (test template).
languages: [en]
metric: classification
inputs:
  text: {type: string}
output:
  kind: label
  labels: [positive, negative, neutral]
prompts:
  en:
    system: "Answer with one label: positive, negative or neutral."
    variants:
      - "Classify the sentiment: {{ text }}"
      - "What is the sentiment of: {{ text }}"
examples:
  - {lang: en, inputs: {text: Profit rose.}, output: positive}
"""

SUMMARY_TEMPLATE = """\
name: report_summary
version: 1
description: Summarise a report (test template).
languages: [en]
metric: rouge
inputs:
  text: {type: string}
output:
  kind: text
  max_length: 500
prompts:
  en:
    variants:
      - "Summarise: {{ text }}"
examples:
  - {lang: en, inputs: {text: Profit rose 8%.}, output: Profit up 8%.}
"""


def label_template():
    from domain_lm.tasks import TaskTemplate

    return TaskTemplate.from_yaml(LABEL_TEMPLATE, "label.yaml")


def summary_template():
    from domain_lm.tasks import TaskTemplate

    return TaskTemplate.from_yaml(SUMMARY_TEMPLATE, "summary.yaml")


POSITIVE = [
    "Profit rose strongly",
    "Revenue grew and margins improved",
    "Deposits increased, outlook positive",
    "Record earnings this year",
]
NEGATIVE = ["Losses widened sharply", "Credit defaults rose, outlook negative", "Profit fell and costs jumped", "The bank cut its dividend"]


def separable_pairs_file(path, n: int = 24):
    """A preference set a reward model can separate perfectly: chosen answers are always the
    word 'positive', rejected ones always 'negative' (distinct tokens at a fixed position)."""
    rows = []
    for i in range(n):
        rows.append({"prompt": f"Question {i}: is this good news? {POSITIVE[i % 4]}", "chosen": "positive", "rejected": "negative"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def load_real_templates():
    """The bundled templates and one ``TaskRecord`` per example they ship."""
    from pathlib import Path

    from domain_lm.data.records import TaskRecord
    from domain_lm.tasks import TemplateRegistry

    reg = TemplateRegistry.load(Path(__file__).resolve().parents[1] / "task_templates")
    records = [TaskRecord(t.name, ex.lang, ex.inputs, ex.output) for t in reg for ex in t.examples]
    if not records:
        pytest.skip("the bundled templates ship no examples")
    return reg, records
