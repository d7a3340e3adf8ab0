"""Champion against challenger on the same labelled studies: paired comparison.

Pure numpy (no torch, no database): :func:`compare_models` takes the labels, each
model's calibrated probabilities on the same studies and their operating-point
thresholds, and returns for each model ROC-AUC, Brier, sensitivity and specificity
at every operating point both cards have, each with a 95 % percentile bootstrap
interval, and for each the *paired* difference (challenger - champion) with its
interval and a two-sided paired-bootstrap p-value (the studies are resampled once per
replicate for both models, so the correlation between them is kept). The same
figures, with the underdiagnosis rate (1 - sensitivity at the applied operating
point), are given per subgroup (age band, sex, view...), resampled within the group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.metrics import brier_score, roc_auc

__all__ = ["ModelScores", "compare_models", "paired_metrics"]


@dataclass(frozen=True)
class ModelScores:
    """One model's calibrated probabilities on the compared studies.

    Attributes
    ----------
    name : str
    probability : numpy.ndarray
        One probability of *abnormal* per study, in the order of the labels.
    thresholds : mapping of str to float
        Operating point name -> probability threshold (the model's card).
    """

    name: str
    probability: np.ndarray
    thresholds: Mapping[str, float]


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    pos = y == 1
    neg = ~pos
    hit = p >= threshold
    sens = float(hit[pos].mean()) if pos.any() else float("nan")
    spec = float((~hit[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def _metrics(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: Mapping[str, float],
    points: Sequence[str],
    applied: str,
) -> dict[str, float]:
    out = {"roc_auc": roc_auc(y, p), "brier": brier_score(y, p)}
    for point in points:
        sens, spec = _rates(y, p, thresholds[point])
        out[f"sensitivity@{point}"] = sens
        out[f"specificity@{point}"] = spec
    out["underdiagnosis_rate"] = 1.0 - out[f"sensitivity@{applied}"]
    return out


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _p_value(diffs: np.ndarray) -> float:
    finite = diffs[np.isfinite(diffs)]
    if not len(finite):
        return float("nan")
    if np.all(finite == 0):
        return 1.0
    below = float(np.mean(finite <= 0))
    above = float(np.mean(finite >= 0))
    return float(min(1.0, 2 * min(below, above)))


def paired_metrics(
    y: np.ndarray,
    champion: ModelScores,
    challenger: ModelScores,
    *,
    applied: str,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Each metric of both models with intervals, and their paired difference.

    Parameters
    ----------
    y : numpy.ndarray
        0/1 labels (1 abnormal).
    champion, challenger : ModelScores
        Probabilities on the same studies, same order as ``y``.
    applied : str
        The operating point the node applies (its sensitivity gives the
        underdiagnosis rate).
    n_boot : int
        Bootstrap replicates.
    alpha : float
        1 - confidence level.
    seed : int

    Returns
    -------
    dict
        ``{"n", "n_abnormal", "metrics": {metric: {"champion": {value, ci_low, ci_high},
        "challenger": {...}, "difference": {value, ci_low, ci_high, p_value}}}}``.
        Metrics undefined on the data (ROC-AUC with one class) are ``nan``.
    """
    y = np.asarray(y).astype(int).ravel()
    p1 = np.asarray(champion.probability, dtype=np.float64).ravel()
    p2 = np.asarray(challenger.probability, dtype=np.float64).ravel()
    if not (len(y) == len(p1) == len(p2)):
        raise ValueError("labels and both models' probabilities must have the same length")
    points = [p for p in champion.thresholds if p in challenger.thresholds]
    if applied not in points:
        raise ValueError(f"both models need the applied operating point {applied!r}")
    m1 = _metrics(y, p1, champion.thresholds, points, applied) if len(y) else {}
    m2 = _metrics(y, p2, challenger.thresholds, points, applied) if len(y) else {}
    keys = list(m1)
    boot1: dict[str, list[float]] = {k: [] for k in keys}
    boot2: dict[str, list[float]] = {k: [] for k in keys}
    rng = np.random.default_rng(seed)
    n = len(y)
    for _ in range(n_boot if n else 0):
        idx = rng.integers(0, n, n)
        b1 = _metrics(y[idx], p1[idx], champion.thresholds, points, applied)
        b2 = _metrics(y[idx], p2[idx], challenger.thresholds, points, applied)
        for k in keys:
            boot1[k].append(b1[k])
            boot2[k].append(b2[k])
    metrics: dict[str, Any] = {}
    for k in keys:
        a1, a2 = np.asarray(boot1[k]), np.asarray(boot2[k])
        lo1, hi1 = _interval(a1, alpha)
        lo2, hi2 = _interval(a2, alpha)
        d = a2 - a1
        lod, hid = _interval(d, alpha)
        metrics[k] = {
            "champion": {"value": m1[k], "ci_low": lo1, "ci_high": hi1},
            "challenger": {"value": m2[k], "ci_low": lo2, "ci_high": hi2},
            "difference": {
                "value": m2[k] - m1[k],
                "ci_low": lod,
                "ci_high": hid,
                "p_value": _p_value(d),
            },
        }
    return {"n": int(n), "n_abnormal": int(y.sum()), "metrics": metrics}


def compare_models(
    y: np.ndarray,
    champion: ModelScores,
    challenger: ModelScores,
    *,
    applied: str,
    groups: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison overall and per subgroup.

    Parameters
    ----------
    y : numpy.ndarray
        0/1 labels.
    champion, challenger : ModelScores
    applied : str
        The operating point in use.
    groups : mapping of str to sequence of str, optional
        Grouping name (``age_band``, ``sex``, ``view``) -> one group value per study.
    n_boot, alpha, seed
        See :func:`paired_metrics`.

    Returns
    -------
    dict
        ``{"champion", "challenger", "applied_operating_point", "overall": ...,
        "subgroups": {grouping: {value: ...}}}`` with :func:`paired_metrics` entries.
    """
    y = np.asarray(y).astype(int).ravel()
    report: dict[str, Any] = {
        "champion": champion.name,
        "challenger": challenger.name,
        "applied_operating_point": applied,
        "overall": paired_metrics(
            y, champion, challenger, applied=applied, n_boot=n_boot, alpha=alpha, seed=seed
        ),
        "subgroups": {},
    }
    for grouping, values in (groups or {}).items():
        values_arr = np.asarray([str(v) for v in values])
        if len(values_arr) != len(y):
            raise ValueError(f"group {grouping!r} has {len(values_arr)} values for {len(y)} labels")
        report["subgroups"][grouping] = {}
        for value in sorted(set(values_arr.tolist())):
            mask = values_arr == value
            sub1 = ModelScores(
                champion.name, np.asarray(champion.probability)[mask], champion.thresholds
            )
            sub2 = ModelScores(
                challenger.name, np.asarray(challenger.probability)[mask], challenger.thresholds
            )
            report["subgroups"][grouping][value] = paired_metrics(
                y[mask], sub1, sub2, applied=applied, n_boot=n_boot, alpha=alpha, seed=seed
            )
    return report
