"""The classical engine for label tasks: TF-IDF + logistic regression fitted on a task's examples.

It answers from the raw inputs (their text, see ``fewshot.input_text``), not from rendered chat
messages, so it does not implement the ``Engine`` protocol: the task handler routes a task to it
when the template says ``engine: classical`` (or ``auto`` picked it). Same pipeline as the eval
baseline (``make_pipeline`` below; ``domain_lm.eval.baseline`` uses it). Nothing is pickled: the model is refitted
from the stored examples (deterministic: fixed seed, lbfgs), which takes about a second for a few
thousand examples, so a writable volume never holds code that the service would unpickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from domain_lm.tasks.fewshot import input_text
from domain_lm.tasks.template import TaskTemplate

#: What a classical answer names as its model.
CLASSICAL_MODEL = "tfidf-logreg"


def make_pipeline(lang: str = "en", seed: int = 42):
    """TF-IDF + logistic regression (unfitted); character n-grams for Chinese, which has no spaces between words."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline as sk_pipeline

    if lang == "zh":
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=1, sublinear_tf=True)
    else:
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)
    clf = LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced", random_state=seed)
    return sk_pipeline(vec, clf)


def fit_predict(
    train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str], lang: str = "en", seed: int = 42
) -> list[str] | None:
    """Fit on the train split and label the test texts; None when the train split has one class."""
    if len(set(train_labels)) < 2:
        return None
    pipe = make_pipeline(lang, seed)
    pipe.fit(list(train_texts), list(train_labels))
    return [str(x) for x in pipe.predict(list(test_texts))]



class ClassicalModel:
    """A fitted TF-IDF + logistic regression model over one task's canonical labels."""

    def __init__(self, template: TaskTemplate, lang: str = "en", seed: int = 42):
        if template.output.classes is None:
            raise ValueError(f"task {template.name!r} has no labels; the classical engine answers label tasks only")
        self.template = template
        self.lang = lang
        self.seed = seed
        self.labels: list[str] = list(template.output.classes)
        self._pipe: Any = None

    @property
    def fitted(self) -> bool:
        return self._pipe is not None

    def fit(self, inputs: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> "ClassicalModel":
        """Fit on examples (inputs, canonical label); ``ValueError`` with fewer than two labels."""
        if len(set(labels)) < 2:
            raise ValueError("the classical model needs examples of at least two labels")
        pipe = make_pipeline(self.lang, self.seed)
        pipe.fit([input_text(self.template, x) for x in inputs], list(labels))
        self._pipe = pipe
        return self

    def log_proba(self, inputs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(N, L) log-probabilities over ``self.labels`` (labels never seen in training get -inf)."""
        if self._pipe is None:
            raise RuntimeError("the classical model is not fitted")
        raw = self._pipe.predict_log_proba([input_text(self.template, x) for x in inputs])
        out = np.full((len(inputs), len(self.labels)), -np.inf)
        for j, cls in enumerate(self._pipe.classes_):
            out[:, self.labels.index(cls)] = raw[:, j]
        return out

    def label_logprobs(self, inputs: Mapping[str, Any]) -> dict[str, float]:
        """Canonical label -> log-probability for one input (labels unseen in training left out)."""
        row = self.log_proba([inputs])[0]
        return {lab: float(v) for lab, v in zip(self.labels, row) if np.isfinite(v)}

    def choice_logprobs(self, inputs: Mapping[str, Any], lang: str) -> dict[str, float]:
        """As ``label_logprobs``, keyed by the answer strings of ``lang`` (what LLM engines score), so
        ``LabelOutput.probabilities`` treats both engines alike."""
        shown = dict(zip(self.labels, self.template.output.choices(lang) or self.labels))
        return {shown[lab]: v for lab, v in self.label_logprobs(inputs).items()}
