"""The classical baseline for classification tasks: TF-IDF + logistic regression.

Shown next to the LLM stages in every report so a bank can see whether a task needs an LLM at all.
The model is the classical engine's (``inference.classical.make_pipeline``).
"""

from __future__ import annotations

from typing import Any, Sequence

from domain_lm.inference.classical import fit_predict, make_pipeline
from domain_lm.tasks.metrics import classification_scores

__all__ = ["fit_predict", "make_pipeline", "run_baseline"]


def run_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    test_labels: Sequence[str],
    labels: Sequence[str] | None = None,
    lang: str = "en",
    seed: int = 42,
) -> dict[str, Any]:
    """Fit on the train split, score on the test split with the same metric as the LLM stages."""
    pred = fit_predict(train_texts, train_labels, test_texts, lang, seed)
    if pred is None:
        return {"skipped": "needs at least two classes in the training split", "n": len(test_texts)}
    scores = classification_scores(list(test_labels), pred, labels)
    scores["train_n"] = len(train_texts)
    return scores
