"""Live monitoring of the model against the radiologists: agreement and drift.

Agreement, sensitivity and specificity against each radiologist's own label, with
Wilson 95 % intervals, overall and by sex, age band (:data:`models.demographics.AGE_BANDS`,
the bands of the model card) and model; and the daily distribution of the study
probabilities.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.demographics import AGE_BANDS, UNKNOWN
from worklist.core.clock import as_utc
from worklist.dicom_values import sex_group
from worklist.tables import Feedback, TriageResult

__all__ = ["agreement_report", "probability_distribution"]


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _confusion(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    tp = fp = tn = fn = 0
    for ai, label in pairs:
        if label == "abnormal":
            tp += ai == "abnormal"
            fn += ai != "abnormal"
        else:
            fp += ai == "abnormal"
            tn += ai != "abnormal"
    n = tp + fp + tn + fn

    def ratio(k: int, m: int) -> dict[str, Any]:
        return {
            "value": (k / m) if m else None,
            "ci95": _wilson(k, m),
            "k": k,
            "n": m,
        }

    return {
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "agreement": ratio(tp + tn, n),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
    }


def agreement_report(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Agreement, sensitivity and specificity of the AI against radiologists' labels.

    The reference is each radiologist's own Normal/Abnormal label; the AI is positive
    when its decision was ``abnormal``. Feedback on studies the AI did not decide
    (not evaluated, failed) is counted separately. Proportions come with Wilson 95 %
    intervals. Groups: overall, by sex, by age band, by model (name and version, so
    that a model update shows).

    Parameters
    ----------
    session : Session
    since, until : datetime, optional
        Feedback time window.
    model_version : str, optional
        Only feedback on results of this model version.

    Returns
    -------
    dict
        ``overall``, ``by_sex``, ``by_age_band``, ``by_model``, ``undecided`` (count).
    """
    query = select(
        Feedback.ai_decision,
        Feedback.label,
        Feedback.patient_sex,
        Feedback.age_band,
        Feedback.model_name,
        Feedback.model_version,
    )
    if model_version is not None:
        query = query.where(Feedback.model_version == model_version)
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    if until is not None:
        query = query.where(Feedback.created_at < until)
    rows = session.execute(query).all()
    decided = [r for r in rows if r.ai_decision in ("normal", "abnormal")]
    by_sex: dict[str, list[tuple[str, str]]] = defaultdict(list)
    by_age: dict[str, list[tuple[str, str]]] = defaultdict(list)
    by_model: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in decided:
        by_sex[sex_group(r.patient_sex)].append((r.ai_decision, r.label))
        by_age[r.age_band or UNKNOWN].append((r.ai_decision, r.label))
        by_model[f"{r.model_name} {r.model_version}"].append((r.ai_decision, r.label))
    age_order = [name for name, _lo, _hi in AGE_BANDS] + [UNKNOWN]
    return {
        "overall": _confusion((r.ai_decision, r.label) for r in decided),
        "by_sex": {k: _confusion(by_sex[k]) for k in sorted(by_sex)},
        "by_age_band": {k: _confusion(by_age[k]) for k in age_order if k in by_age},
        "by_model": {k: _confusion(by_model[k]) for k in sorted(by_model)},
        "undecided": len(rows) - len(decided),
    }


def probability_distribution(
    session: Session, *, days: int, now: datetime, bins: int = 10
) -> list[dict[str, Any]]:
    """Daily distribution of the study probabilities of the triage results (drift).

    Parameters
    ----------
    session : Session
    days : int
        How many days back from ``now`` (UTC days, today included).
    now : datetime
    bins : int
        Equal-width bins over [0, 1].

    Returns
    -------
    list of dict
        One per day with results: ``day``, ``n``, ``mean``, ``median``, ``p90``,
        ``abnormal_rate``, ``histogram`` (counts per bin) and ``bin_edges``.
    """
    start = datetime.combine((now - timedelta(days=days - 1)).date(), time.min, tzinfo=UTC)
    query = select(TriageResult.finished_at, TriageResult.probability, TriageResult.decision).where(
        TriageResult.finished_at >= start, TriageResult.probability.is_not(None)
    )
    per_day: dict[date, list[tuple[float, str | None]]] = defaultdict(list)
    for finished, probability, decision in session.execute(query):
        per_day[as_utc(finished).date()].append((float(probability), decision))
    edges = [i / bins for i in range(bins + 1)]
    out = []
    for day in sorted(per_day):
        values = sorted(p for p, _d in per_day[day])
        n = len(values)
        hist = [0] * bins
        for p in values:
            hist[min(bins - 1, max(0, int(p * bins)))] += 1
        out.append(
            {
                "day": day.isoformat(),
                "n": n,
                "mean": sum(values) / n,
                "median": _quantile(values, 0.5),
                "p90": _quantile(values, 0.9),
                "abnormal_rate": sum(d == "abnormal" for _p, d in per_day[day]) / n,
                "histogram": hist,
                "bin_edges": edges,
            }
        )
    return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
