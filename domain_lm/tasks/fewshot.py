"""Few-shot by retrieval: the task's most similar labelled examples as example turns in the prompt.

A template with ``few_shot: {k: 4}`` answers (when the base model answers, without an adapter)
with the ``k`` examples whose inputs are most similar to the request's, by TF-IDF cosine over the
inputs' text. Deterministic (ties go to the earlier example) and bounded: the pool is fixed when
the index is built (examples longer than ``max_chars`` are left out), a query costs one sparse
vector product, and ``k`` is at most ``spec.MAX_FEW_SHOT``. The turns are rendered by the
template itself, exactly as its own few-shot examples are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from domain_lm.tasks.template import TaskTemplate

#: Largest pool an index keeps (the uploads are bounded too; this guards direct callers).
MAX_POOL = 50_000


class Shot:
    """One labelled example shown in a prompt."""

    __slots__ = ("inputs", "output")

    def __init__(self, inputs: Mapping[str, Any], output: Any):
        self.inputs = dict(inputs)
        self.output = output


def input_text(template: TaskTemplate, inputs: Mapping[str, Any]) -> str:
    """The text of a record's inputs, in the template's field order (what retrieval and the
    classical model see): strings as they are, lists joined, other values as text."""
    parts = []
    for name in template.inputs:
        v = inputs.get(name)
        if v is None:
            continue
        parts.append(" ".join(map(str, v)) if isinstance(v, list) else str(v))
    return "\n".join(parts)


def _vectorizer(lang: str):
    from sklearn.feature_extraction.text import TfidfVectorizer

    if lang == "zh":  # no spaces between words: character n-grams
        return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)


class ExampleIndex:
    """TF-IDF index over one language's labelled examples of one task."""

    def __init__(self, template: TaskTemplate, lang: str, shots: Sequence[Shot], max_chars: int = 2000):
        self.template = template
        self.lang = lang
        pool = [s for s in shots if len(input_text(template, s.inputs)) <= max_chars][:MAX_POOL]
        self.shots = pool
        self._keys = [template.validate_inputs(s.inputs) for s in pool]
        self._vec = None
        self._matrix = None
        texts = [input_text(template, s.inputs) for s in pool]
        if any(t.strip() for t in texts):
            self._vec = _vectorizer(lang)
            try:
                self._matrix = self._vec.fit_transform(texts)  # rows are L2-normalised: dot product = cosine
            except ValueError:  # nothing but stop words / empty vocabulary
                self._vec = None

    @classmethod
    def from_template(cls, template: TaskTemplate, lang: str, max_chars: int = 2000) -> "ExampleIndex":
        """An index over the template's own examples for ``lang`` (before any upload)."""
        shots = [Shot(ex.inputs, ex.output) for ex in template.examples_for(lang) if ex.few_shot]
        return cls(template, lang, shots, max_chars)

    def __len__(self) -> int:
        return len(self.shots)

    def nearest(self, inputs: Mapping[str, Any], k: int) -> list[Shot]:
        """The ``k`` most similar examples, most similar last (closest to the question), never one
        whose inputs equal ``inputs``; ties go to the earlier example."""
        if k <= 0 or not self.shots:
            return []
        values = self.template.validate_inputs(dict(inputs))
        if self._vec is None or self._matrix is None:
            order = list(range(len(self.shots)))
        else:
            q = self._vec.transform([input_text(self.template, values)])
            sims = np.asarray((self._matrix @ q.T).todense()).ravel()
            order = list(np.argsort(-sims, kind="stable"))
        picked = [i for i in order if self._keys[i] != values][:k]
        return [self.shots[i] for i in reversed(picked)]


def shot_messages(
    template: TaskTemplate, inputs: Mapping[str, Any], lang: str, shots: Sequence[Shot], variant: int = 0
) -> list[dict[str, str]]:
    """The request's messages with ``shots`` as example turns before it (as ``render_messages``
    places the template's own few-shot examples): system, (user, assistant) per shot, user."""
    messages = template.render_messages(dict(inputs), lang=lang, variant=variant)
    head, question = messages[:-1], messages[-1]
    turns: list[dict[str, str]] = []
    for s in shots:
        user = template.render_messages(s.inputs, lang=lang, variant=variant)[-1]
        turns += [user, {"role": "assistant", "content": template.target_text(s.output, lang)}]
    return [*head, *turns, question]
