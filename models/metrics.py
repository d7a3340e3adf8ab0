"""Binary classification metrics in numpy (no scikit-learn, no torch).

Checked against scikit-learn in ``tests/unit/models/test_metrics.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "average_precision",
    "bootstrap_ci",
    "brier_score",
    "calibration_bins",
    "confusion",
    "expected_calibration_error",
    "fit_temperature",
    "operating_point_balanced",
    "operating_point_for_sensitivity",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "sigmoid",
    "threshold_metrics",
]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _check(
    y: Sequence[int] | np.ndarray, s: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    return y, s


def roc_auc(y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half).

    Returns ``nan`` when only one class is present.
    """
    y, s = _check(y_true, score)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``fpr, tpr, thresholds`` (decreasing thresholds, first is +inf).

    A sample is positive when ``score >= threshold``.
    """
    y, s = _check(y_true, score)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s) - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thr


def precision_recall_curve(
    y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall pairs for decreasing thresholds: ``precision, recall, thresholds``."""
    y, s = _check(y_true, score)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s) - 1]
    tps = np.cumsum(y_sorted)[distinct]
    predicted = distinct + 1
    precision = tps / predicted
    recall = tps / max(int(y.sum()), 1)
    return precision, recall, s_sorted[distinct]


def average_precision(
    y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray
) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` (as scikit-learn)."""
    precision, recall, _ = precision_recall_curve(y_true, score)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier_score(y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray) -> float:
    """Mean squared difference between the probability and the 0/1 label."""
    y, p = _check(y_true, prob)
    return float(np.mean((p - y) ** 2))


def confusion(
    y_true: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray
) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` for 0/1 predictions."""
    y, p = _check(y_true, pred)
    p = p.astype(int)
    return {
        "tp": int(((p == 1) & (y == 1)).sum()),
        "fp": int(((p == 1) & (y == 0)).sum()),
        "tn": int(((p == 0) & (y == 0)).sum()),
        "fn": int(((p == 0) & (y == 1)).sum()),
    }


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def threshold_metrics(
    y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity, F1 at ``prob >= threshold``."""
    y, p = _check(y_true, prob)
    c = confusion(y, (p >= threshold).astype(int))
    precision = _div(c["tp"], c["tp"] + c["fp"])
    recall = _div(c["tp"], c["tp"] + c["fn"])
    f1 = _div(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    return {
        "threshold": float(threshold),
        "accuracy": _div(c["tp"] + c["tn"], len(y)),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _div(c["tn"], c["tn"] + c["fp"]),
        "f1": f1,
        **{k: float(v) for k, v in c.items()},
    }


def operating_point_balanced(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising Youden's J (sensitivity + specificity - 1)."""
    fpr, tpr, thr = roc_curve(y_true, prob)
    j = tpr - fpr
    j[0] = -np.inf  # the +inf threshold
    return float(thr[int(np.argmax(j))])


def operating_point_for_sensitivity(
    y_true: np.ndarray, prob: np.ndarray, target: float = 0.95
) -> float:
    """Highest threshold whose sensitivity is at least ``target``."""
    _, tpr, thr = roc_curve(y_true, prob)
    ok = np.nonzero(tpr >= target)[0]
    idx = int(ok[0]) if len(ok) else len(thr) - 1
    return float(thr[max(idx, 1)])


def calibration_bins(
    y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray, n_bins: int = 10
) -> dict[str, list[float]]:
    """Reliability diagram data: mean predicted probability, observed frequency, count per bin."""
    y, p = _check(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    mean_p, frac, count = [], [], []
    for b in range(n_bins):
        m = idx == b
        count.append(int(m.sum()))
        mean_p.append(float(p[m].mean()) if m.any() else float("nan"))
        frac.append(float(y[m].mean()) if m.any() else float("nan"))
    return {
        "edges": edges.tolist(),
        "mean_predicted": mean_p,
        "fraction_positive": frac,
        "count": count,
    }


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins."""
    bins = calibration_bins(y_true, prob, n_bins)
    n = sum(bins["count"])
    return float(
        sum(
            c * abs(m - f)
            for c, m, f in zip(
                bins["count"], bins["mean_predicted"], bins["fraction_positive"], strict=True
            )
            if c
        )
        / max(n, 1)
    )


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T minimising the log-loss of ``sigmoid(logits / T)``.

    Golden-section search on log T in [log 0.05, log 20].
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y_true, dtype=np.float64).ravel()

    def nll(log_t: float) -> float:
        a = z / np.exp(log_t)
        # log(1 + exp(-a)) for y=1, log(1 + exp(a)) for y=0
        return float(np.mean(np.logaddexp(0.0, -a) * y + np.logaddexp(0.0, a) * (1 - y)))

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(80):
        if nll(c) < nll(d):
            hi = d
        else:
            lo = c
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    return float(np.exp((lo + hi) / 2))


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    score: np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Point estimate and percentile bootstrap interval of ``metric(y, score)``.

    Resamples images with replacement; resamples where the metric is undefined
    (e.g. one class only for ROC-AUC) are skipped.
    """
    y, s = _check(y_true, score)
    rng = np.random.default_rng(seed)
    point = metric(y, s)
    values = []
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = metric(y[idx], s[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return {"value": point, "ci_low": float("nan"), "ci_high": float("nan"), "n_boot": 0}
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi), "n_boot": len(values)}
