"""Scoring and the priority rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from triage.scoring import Decision, aggregate, decide, score_study
from worklist.priority import Priority, compute_priority, hospital_level, worklist_sort_key


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def test_aggregate_max_and_mean() -> None:
    assert aggregate([0.1, 2.0, -1.0], "max") == pytest.approx(2.0)
    assert aggregate([0.0, 3.0], "mean") == pytest.approx(1.5)
    with pytest.raises(ValueError):
        aggregate([], "max")
    with pytest.raises(ValueError):
        aggregate([1.0], "median")


def test_decision_at_threshold() -> None:
    assert decide(0.5, 0.5) is Decision.ABNORMAL
    assert decide(0.4999, 0.5) is Decision.NORMAL


def test_score_study_calibrates_the_aggregate() -> None:
    s = score_study([-2.0, 1.0], calibrate=sigmoid, threshold=0.6, operating_point="balanced")
    assert s.score == pytest.approx(1.0)
    assert s.probability == pytest.approx(sigmoid(1.0))
    assert s.decision is Decision.ABNORMAL
    assert s.image_probabilities == pytest.approx(tuple(sigmoid([-2.0, 1.0])))
    m = score_study([-2.0, 1.0], calibrate=sigmoid, threshold=0.6, operating_point="b", how="mean")
    assert m.decision is Decision.NORMAL


def test_priority_order_of_ai_levels() -> None:
    high = compute_priority(
        status="triaged", decision="abnormal", probability=0.95, requested_priority=None
    )
    abn = compute_priority(
        status="triaged", decision="abnormal", probability=0.6, requested_priority=None
    )
    ne = compute_priority(
        status="not_evaluated", decision=None, probability=None, requested_priority=None
    )
    normal = compute_priority(
        status="triaged", decision="normal", probability=0.1, requested_priority=None
    )
    assert high.priority < abn.priority < ne.priority < normal.priority


def test_stat_stays_on_top() -> None:
    d = compute_priority(
        status="triaged", decision="normal", probability=0.01, requested_priority="STAT"
    )
    assert d.priority is Priority.STAT
    assert "hospital priority STAT kept" in d.reason


@given(
    status=st.sampled_from(["triaged", "not_evaluated", "failed"]),
    decision=st.sampled_from(["abnormal", "normal", None]),
    probability=st.one_of(st.none(), st.floats(0, 1)),
    requested=st.sampled_from([None, "", "STAT", "HIGH", "MEDIUM", "ROUTINE", "LOW", "odd"]),
)
def test_ai_never_lowers_hospital_priority(status, decision, probability, requested) -> None:  # type: ignore[no-untyped-def]
    d = compute_priority(
        status=status, decision=decision, probability=probability, requested_priority=requested
    )
    level = hospital_level(requested)
    if level is not None:
        assert d.priority <= level


def test_wait_cap_moves_old_studies_up() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    cap = timedelta(minutes=60)
    old_normal = worklist_sort_key(
        Priority.NORMAL, now - timedelta(minutes=61), now=now, wait_cap=cap
    )
    fresh_abnormal = worklist_sort_key(
        Priority.ABNORMAL_HIGH, now - timedelta(minutes=1), now=now, wait_cap=cap
    )
    stat = worklist_sort_key(Priority.STAT, now, now=now, wait_cap=cap)
    assert sorted([fresh_abnormal, old_normal, stat]) == [stat, old_normal, fresh_abnormal]


@given(
    waits=st.lists(st.integers(0, 600), min_size=1, max_size=30),
    priorities=st.lists(st.sampled_from(list(Priority)), min_size=30, max_size=30),
)
def test_no_study_waits_beyond_cap_behind_a_younger_non_stat(waits, priorities) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    cap = timedelta(minutes=120)
    studies = [(p, now - timedelta(minutes=w)) for w, p in zip(waits, priorities, strict=False)]
    order = sorted(studies, key=lambda s: worklist_sort_key(s[0], s[1], now=now, wait_cap=cap))
    for i, (_, arrived) in enumerate(order):
        if now - arrived > cap:
            ahead = order[:i]
            assert all(q == Priority.STAT or now - a > cap for q, a in ahead)
