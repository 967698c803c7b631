"""Bootstrap intervals for the headline metrics, and paired comparisons of two systems.

Every headline metric is a function of per-example statistics summed over the examples:

* classification (weighted F1): one-hot gold class, predicted class and hit per example;
* ner (micro F1): true positives, predicted and gold entities per example;
* extraction (exact match), rouge (ROUGE-L): the example's score and a count of 1.

So a bootstrap resample is a vector of counts over the examples and the metric of every resample is
one matrix product (``ExampleStats.values``): a thousand resamples of a few hundred examples cost
milliseconds. Resamples are drawn once per task and shared by every system scored on it, so the
difference of two systems is a *paired* bootstrap (Efron & Tibshirani 1993, ch. 16; Koehn 2004 for
its use in comparing NLP systems).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from domain_lm.tasks import metrics

#: Resamples per interval; 1,000 gives a stable 95% percentile interval.
N_BOOT = 1000


def _weighted_f1(sums: np.ndarray) -> np.ndarray:
    """Weighted F1 from summed [gold one-hot | predicted one-hot | hits], shape (B, 3C) -> (B,)."""
    c = sums.shape[1] // 3
    gold, pred, hit = sums[:, :c], sums[:, c : 2 * c], sums[:, 2 * c :]
    denom = gold + pred
    f1 = np.divide(2 * hit, denom, out=np.zeros_like(denom), where=denom > 0)
    support = gold.sum(axis=1)
    return np.divide((f1 * gold).sum(axis=1), support, out=np.zeros_like(support), where=support > 0)


def _micro_f1(sums: np.ndarray) -> np.ndarray:
    """Micro F1 from summed [tp, predicted, gold], shape (B, 3) -> (B,)."""
    denom = sums[:, 1] + sums[:, 2]
    return np.divide(2 * sums[:, 0], denom, out=np.zeros_like(denom), where=denom > 0)


def _mean(sums: np.ndarray) -> np.ndarray:
    """Mean from summed [score, count], shape (B, 2) -> (B,)."""
    return np.divide(sums[:, 0], sums[:, 1], out=np.zeros_like(sums[:, 0]), where=sums[:, 1] > 0)


@dataclass(frozen=True)
class ExampleStats:
    """Per-example statistics (n, k) and how summed statistics become the metric."""

    rows: np.ndarray
    finish: Callable[[np.ndarray], np.ndarray]

    def value(self) -> float:
        """The metric on the examples as they are."""
        return float(self.finish(self.rows.sum(axis=0, keepdims=True))[0])

    def values(self, counts: np.ndarray) -> np.ndarray:
        """The metric on each resample; ``counts`` (B, n) says how often each example was drawn."""
        return self.finish(counts @ self.rows)


def example_stats(
    metric: str, gold: Sequence[Any], pred: Sequence[Any | None], labels: Sequence[str] | None = None, lang: str | None = None
) -> ExampleStats:
    """The per-example statistics of ``metric``'s headline number (``tasks.metrics.PRIMARY``).

    ``gold`` and ``pred`` are the values the metric compares (a contract's ``metric_value``); a
    ``None`` prediction broke the contract and counts as wrong, as in ``tasks.metrics.score``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")
    n = len(gold)
    if metric == "classification":
        classes = list(labels) if labels else sorted(set(gold))
        index = {c: i for i, c in enumerate(classes)}
        rows = np.zeros((n, 3 * len(classes)))
        for i, (g, p) in enumerate(zip(gold, pred)):
            if g in index:
                rows[i, index[g]] = 1
            if p in index:
                rows[i, len(classes) + index[p]] = 1
                rows[i, 2 * len(classes) + index[p]] = float(p == g)
        return ExampleStats(rows, _weighted_f1)
    if metric == "ner":
        rows = np.zeros((n, 3))
        for i, (g, p) in enumerate(zip(gold, pred)):
            s = metrics.entity_scores([g], [p])
            n_gold, n_pred = len(list(g)), len(list(p or []))
            tp = round(s["recall"] * n_gold) if n_gold else round(s["precision"] * n_pred)
            rows[i] = (tp, n_pred, n_gold)
        return ExampleStats(rows, _micro_f1)
    key = metrics.PRIMARY.get(metric, "exact_match")
    per = [metrics.primary(metric, metrics.score(metric, [g], [p], labels=labels, lang=lang)) for g, p in zip(gold, pred)]
    if key not in ("exact_match", "rougeL"):
        raise ValueError(f"no bootstrap for metric {metric!r}")
    return ExampleStats(np.column_stack([np.asarray(per, dtype=float), np.ones(n)]) if n else np.zeros((0, 2)), _mean)


def resample_counts(n: int, n_boot: int = N_BOOT, seed: int = 42) -> np.ndarray:
    """(n_boot, n) draw counts of ``n_boot`` seeded resamples of ``n`` examples with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1)
    return counts


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``values``."""
    lo, hi = np.percentile(values, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on the same examples: the observed difference, its paired-bootstrap 95%
    interval and the share of resamples in which ``a`` is not better (a one-sided p-value)."""

    diff: float
    low: float
    high: float
    p_not_better: float

    @property
    def better(self) -> bool:
        return self.low > 0

    @property
    def worse(self) -> bool:
        return self.high < 0


def compare(a: ExampleStats, b: ExampleStats, counts: np.ndarray) -> Comparison:
    """Paired bootstrap of ``a - b`` over the resamples ``counts`` (the same examples for both)."""
    d = a.values(counts) - b.values(counts)
    lo, hi = interval(d)
    return Comparison(a.value() - b.value(), lo, hi, float(np.mean(d <= 0)))
