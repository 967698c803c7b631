"""Calibration and uncertainty for label answers: temperature scaling, ECE, bootstrap intervals.

Pure functions over plain lists (numpy inside), used by the task-teaching job to report each system
on the held-out split of a task's examples and to turn label log-likelihoods into probabilities.

Why temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks",
arXiv:1706.04599) rather than isotonic regression: a user's held-out split is small (tens to a few
hundred examples) and often has many labels. Temperature scaling fits ONE parameter on the full
multi-class distribution (every label's log-likelihood), cannot overfit such a split, never
changes which label is most likely (so accuracy and F1 are untouched) and gives every label a
probability. Isotonic regression fits a free monotone step function per class (one-vs-rest for
several labels), needs far more data per class than a user uploads, and yields tied, piecewise
constant probabilities. The reported calibration error is cross-fitted (temperature fitted on one
half of the split, measured on the other) so the number is not flattered by fitting and measuring
on the same examples.

Per-label bias (vector scaling's bias term with one shared temperature; Guo et al. section 4.2, the
"contextual calibration" of Zhao et al. 2021, arXiv:2102.09690): a fine-tuned model's label prior
is often off (it learnt a training mix, or over-answers the commonest label: the FinFE adapter
answered positive for 209 of 300 posts with 170 gold), and one offset per label, fitted with the
temperature on the held-out split, moves it back. Unlike the temperature it changes which label is
most likely, so it is kept only where the split is large enough (``MIN_BIAS``) and where answers
chosen with it score at least as well, cross-fitted (fitted on one half of the split, scored on the
other), as the answers without it; ``calibrate`` reports both scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Temperatures searched (log-uniform bounds): below 0.05 or above 20 the fit is degenerate.
T_MIN, T_MAX = 0.05, 20.0
#: Fewest held-out examples a temperature is fitted on; below it the probabilities stay uncalibrated.
MIN_CALIBRATION = 10
#: Fewest held-out examples a per-label bias is fitted on (it adds one parameter per label but one).
MIN_BIAS = 60
#: Bound on a label's bias (log-odds) and the ridge pulling biases to 0 (per example's mean NLL).
BIAS_MAX, BIAS_RIDGE = 8.0, 1e-3
ECE_BINS = 10


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: Sequence[Sequence[float]], temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``; shape (N, K)."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=float) / temperature))


def nll(logits: Sequence[Sequence[float]], gold: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold classes under ``softmax(logits / T)``."""
    lp = _log_softmax(np.asarray(logits, dtype=float) / temperature)
    return float(-lp[np.arange(len(gold)), np.asarray(gold)].mean())


def fit_temperature(logits: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """The temperature minimising held-out NLL (bounded scalar search over log T); 1.0 with too few examples."""
    from scipy.optimize import minimize_scalar

    if len(gold) < MIN_CALIBRATION:
        return 1.0
    x = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    res = minimize_scalar(lambda log_t: nll(x, g, math.exp(log_t)), bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded")
    return float(math.exp(res.x))


def scaled_log_softmax(logits: Sequence[Sequence[float]], temperature: float = 1.0, bias: Sequence[float] | None = None) -> np.ndarray:
    """Row-wise log-softmax of ``logits / temperature + bias``; shape (N, K)."""
    x = np.asarray(logits, dtype=float) / temperature
    return _log_softmax(x if bias is None else x + np.asarray(bias, dtype=float))


def fit_scaling(logits: Sequence[Sequence[float]], gold: Sequence[int]) -> tuple[float, list[float]]:
    """(temperature, per-label bias) minimising held-out NLL of ``softmax(logits / T + b)``, with a light
    ridge on ``b`` (a label missing from the split is pushed down, not to minus infinity). With fewer than
    ``MIN_BIAS`` examples only the temperature is fitted (biases 0; ``calibrate`` keeps biases only
    from ``2 * MIN_BIAS``, so that each half of its cross-fit fits them too). Biases are centred (softmax ignores a
    shift)."""
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    k = x.shape[1] if x.ndim == 2 else 0
    t0 = fit_temperature(x, g)
    if len(g) < MIN_BIAS or k < 2:
        return t0, [0.0] * k
    rows = np.arange(len(g))

    def loss(theta: np.ndarray) -> float:
        b = np.concatenate([[0.0], theta[1:]])
        lp = _log_softmax(x / math.exp(theta[0]) + b)
        return float(-lp[rows, g].mean() + BIAS_RIDGE * (b**2).sum())

    bounds = [(math.log(T_MIN), math.log(T_MAX))] + [(-BIAS_MAX, BIAS_MAX)] * (k - 1)
    res = minimize(loss, np.concatenate([[math.log(t0)], np.zeros(k - 1)]), method="L-BFGS-B", bounds=bounds)
    b = np.concatenate([[0.0], res.x[1:]])
    return float(math.exp(res.x[0])), (b - b.mean()).tolist()


def cross_fitted_argmax(logits: Sequence[Sequence[float]], gold: Sequence[int]) -> np.ndarray:
    """Each row's most likely label under the scaling fitted on the OTHER half of the rows (interleaved halves)."""
    x = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    out = x.argmax(axis=1)
    halves = [np.arange(len(g)) % 2 == 0, np.arange(len(g)) % 2 == 1]
    for fit_on, test_on in (halves, halves[::-1]):
        t, b = fit_scaling(x[fit_on], g[fit_on])
        out[test_on] = scaled_log_softmax(x[test_on], t, b).argmax(axis=1)
    return out


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Expected calibration error of top-label confidences: the bin-weighted |accuracy - confidence|."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if not len(conf):
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return float(total)


def top_ece(logits: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    return _top_ece_lp(scaled_log_softmax(logits, temperature), gold)


def calibrate(
    logits: Sequence[Sequence[float]], gold: Sequence[int], score: Callable[[np.ndarray, np.ndarray], float] | None = None
) -> dict[str, Any]:
    """Fit a temperature (and, on a large enough split, per-label biases) on all rows; report ECE before
    and after, the latter cross-fitted on two halves.

    Returns ``{"temperature", "bias", "n", "ece_before", "ece_after", "nll_before", "nll_after",
    "calibrated"}``. The biases are kept only when the answers they choose, cross-fitted, score at least
    as well by ``score(gold, predicted)`` (default: accuracy) as the uncalibrated answers; then
    ``"cross_fitted"`` holds those predictions and ``"score_before"`` / ``"score_after"`` both scores.
    """
    x = np.asarray(logits, dtype=float)
    g = np.asarray(gold)
    n = len(g)
    k = x.shape[1] if x.ndim == 2 else 0
    out: dict[str, Any] = {"n": n, "calibrated": n >= MIN_CALIBRATION, "bias": [0.0] * k}
    if n == 0:
        return {**out, "temperature": 1.0}
    t, b = fit_scaling(x, g)
    if any(b) and n >= 2 * MIN_BIAS:  # each half of the cross-fit is large enough to fit biases on
        metric = score or (lambda gg, pp: float((gg == pp).mean()))
        cross = cross_fitted_argmax(x, g)
        before, after = metric(g, x.argmax(axis=1)), metric(g, cross)
        out.update(score_before=before, score_after=after)
        if after >= before:
            out.update(bias=b, cross_fitted=cross.tolist())
    if not any(out["bias"]):
        t = fit_temperature(x, g)
    bias = out["bias"]
    lp = scaled_log_softmax(x, t, bias)
    out.update(temperature=t, ece_before=top_ece(x, g, 1.0), nll_before=nll(x, g), nll_after=float(-lp[np.arange(n), g].mean()))
    if n >= 2 * MIN_CALIBRATION:
        halves = [np.arange(n) % 2 == 0, np.arange(n) % 2 == 1]  # deterministic, interleaved
        errs = []
        for fit_on, test_on in (halves, halves[::-1]):
            th, bh = fit_scaling(x[fit_on], g[fit_on]) if any(bias) else (fit_temperature(x[fit_on], g[fit_on]), None)
            errs.append(_top_ece_lp(scaled_log_softmax(x[test_on], th, bh), g[test_on]) * test_on.sum())
        out["ece_after"] = float(sum(errs) / n)
    else:
        out["ece_after"] = _top_ece_lp(lp, g)
    return out


def _top_ece_lp(lp: np.ndarray, gold: np.ndarray) -> float:
    probs = np.exp(lp)
    return ece(probs.max(axis=1), probs.argmax(axis=1) == gold)


def selective(
    confidence: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)
) -> list[dict[str, float]]:
    """For each abstention threshold: the share of answers kept (coverage) and their accuracy."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=bool)
    rows = []
    for t in thresholds:
        kept = conf >= t
        rows.append(
            {
                "threshold": float(t),
                "coverage": float(kept.mean()) if len(conf) else 0.0,
                "accuracy": float(hit[kept].mean()) if kept.any() else 0.0,
            }
        )
    return rows


def bootstrap_ci(
    gold: Sequence[Any],
    pred: Sequence[Any],
    metric: Callable[[list[Any], list[Any]], float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(gold, pred)`` over examples resampled with replacement."""
    n = len(gold)
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    g, p = list(gold), list(pred)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        stats.append(metric([g[i] for i in idx], [p[i] for i in idx]))
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(
    gold: Sequence[Any],
    pred_a: Sequence[Any],
    pred_b: Sequence[Any],
    metric: Callable[[list[Any], list[Any]], float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(metric(a) - metric(b), interval): both systems scored on the same resampled examples."""
    n = len(gold)
    g, a, b = list(gold), list(pred_a), list(pred_b)
    point = metric(g, a) - metric(g, b)
    if n == 0:
        return point, 0.0, 0.0
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        gi = [g[i] for i in idx]
        diffs.append(metric(gi, [a[i] for i in idx]) - metric(gi, [b[i] for i in idx]))
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(point), float(lo), float(hi)


def weighted_f1_codes(gold: Sequence[int], pred: Sequence[int], k: int) -> float:
    """Support-weighted F1 over classes ``0..k-1`` of integer-coded labels (a prediction of -1, an
    invalid answer, is a miss for its gold class). Equal to scikit-learn's ``average="weighted"``
    with ``labels=range(k)``; fast enough to run a thousand times per bootstrap."""
    g = np.asarray(gold, dtype=int)
    p = np.asarray(pred, dtype=int)
    if not len(g):
        return 0.0
    tp = np.bincount(g[g == p], minlength=k)[:k].astype(float)
    support = np.bincount(g, minlength=k)[:k].astype(float)
    predicted = np.bincount(p[p >= 0], minlength=k)[:k].astype(float)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float((f1 * support).sum() / support.sum())
