"""Small stand-ins for task templates (to the TASKS contract) and record sets for the RLHF tests.

The real bundled templates are used where they exist (``load_real_templates``); these stand-ins
keep the preference/reward/PPO tests independent of template wording.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from domain_lm.tasks.errors import ContractError


class LabelTemplate:
    name = "sentiment"
    version = 1
    languages = ["en"]
    metric = "classification"
    adapter = None
    output = SimpleNamespace(kind="label", labels=["positive", "negative", "neutral"])
    _phrasings = ["Classify the sentiment: {text}", "What is the sentiment of: {text}"]

    def num_variants(self, lang="en"):
        return len(self._phrasings)

    def render_messages(self, inputs, lang="en", variant=0, few_shot=0):
        return [
            {"role": "system", "content": "Answer with one label: positive, negative or neutral."},
            {"role": "user", "content": self._phrasings[variant].format(**inputs)},
        ]

    def target_text(self, value, lang="en"):
        return str(value)

    def parse_output(self, text, lang="en"):
        t = text.strip()
        if t not in self.output.labels:
            raise ContractError("not one of the labels", raw=text, task=self.name)
        return t

    def choices(self, lang="en"):
        return list(self.output.labels)

    def json_schema(self):
        return None


class SummaryTemplate(LabelTemplate):
    name = "report_summary"
    metric = "rouge"
    output = SimpleNamespace(kind="text", labels=None)
    _phrasings = ["Summarise: {text}"]

    def parse_output(self, text, lang="en"):
        if not text.strip():
            raise ContractError("empty summary", raw=text, task=self.name)
        return text.strip()

    def choices(self, lang="en"):
        return None


POSITIVE = ["Profit rose strongly", "Revenue grew and margins improved", "Deposits increased, outlook positive", "Record earnings this year"]
NEGATIVE = ["Losses widened sharply", "Credit defaults rose, outlook negative", "Profit fell and costs jumped", "The bank cut its dividend"]


def label_records(n_each: int = 4) -> list[tuple]:
    t = LabelTemplate()
    recs = [(t, {"text": s}, "en", "positive") for s in POSITIVE[:n_each]]
    recs += [(t, {"text": s}, "en", "negative") for s in NEGATIVE[:n_each]]
    return recs


def separable_pairs_file(path, n: int = 24):
    """A preference set a reward model can separate perfectly: chosen answers are always the
    word 'positive', rejected ones always 'negative' (distinct tokens at a fixed position)."""
    rows = []
    for i in range(n):
        rows.append({"prompt": f"Question {i}: is this good news? {POSITIVE[i % 4]}", "chosen": "positive", "rejected": "negative"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def load_real_templates():
    """The bundled templates and one record per example they ship; skip until the TASKS API lands."""
    try:
        from domain_lm.tasks import TemplateRegistry
    except ImportError:
        pytest.skip("domain_lm.tasks.TemplateRegistry is not available yet")
    from pathlib import Path

    reg = TemplateRegistry.load(Path(__file__).resolve().parents[1] / "task_templates")
    records = []
    for name in reg.names():
        t = reg.get(name)
        for ex in getattr(t, "examples", None) or []:
            inputs = ex.get("inputs") if isinstance(ex, dict) else getattr(ex, "inputs", None)
            output = ex.get("output") if isinstance(ex, dict) else getattr(ex, "output", None)
            lang = (ex.get("lang") if isinstance(ex, dict) else getattr(ex, "lang", None)) or "en"
            if inputs is not None and output is not None:
                records.append((t, inputs, lang, output))
    if not records:
        pytest.skip("the bundled templates ship no examples in a known shape")
    return reg, records
