"""The classical baseline for classification tasks: TF-IDF + logistic regression.

Shown next to the LLM stages in every report so a bank can see whether a task needs an LLM at all.
Character n-grams are added for Chinese, which has no spaces between words.
"""

from __future__ import annotations

from typing import Any, Sequence

from domain_lm.tasks.metrics import classification_scores


def make_pipeline(lang: str = "en", seed: int = 42):
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
