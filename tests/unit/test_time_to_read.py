"""Live time-to-read figures on a database with known timestamps (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worklist.tables import Feedback, Study, StudyRead, TriageResult, User
from worklist.time_to_read import time_to_read_report

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _study(
    session,
    n: int,
    arrival: datetime,
    *,
    priority: int | None,
    claimed: timedelta | None = None,
    read: timedelta = 2 * MIN,
    completed: bool = True,
    label: str | None = None,
    user: User,
) -> None:
    study = Study(
        study_instance_uid=f"1.2.3.{n}",
        state="triaged" if priority is not None else "queued",
        revision=1,
        instance_count=1,
        first_received_at=arrival,
        last_received_at=arrival,
        stable_at=arrival + timedelta(seconds=10),
    )
    session.add(study)
    session.flush()
    if priority is not None:
        session.add(
            TriageResult(
                study_id=study.id,
                revision=1,
                status="triaged",
                decision="normal",
                probability=0.1,
                aggregation="max",
                operating_point="balanced",
                threshold=0.3,
                model_name="m",
                model_version="1",
                model_sha256="0" * 64,
                priority=priority,
                priority_reason="test",
                started_at=arrival + timedelta(seconds=10),
                finished_at=arrival + timedelta(seconds=11),
            )
        )
    if claimed is not None:
        session.add(
            StudyRead(
                study_id=study.id,
                state="completed" if completed else "claimed",
                user_id=user.id,
                claimed_at=arrival + claimed,
                completed_at=arrival + claimed + read if completed else None,
            )
        )
    if label is not None:
        session.add(
            Feedback(
                study_id=study.id,
                revision=1,
                user_id=user.id,
                label=label,
                created_at=NOW,
                updated_at=NOW,
            )
        )


@pytest.fixture
def figures(session_factory) -> dict:
    with session_factory() as session:
        user = User(username="rad", role="radiologist", created_at=NOW)
        session.add(user)
        session.flush()
        today = NOW - 3 * 60 * MIN  # 09:00 today
        yesterday = today - timedelta(days=1)
        # Abnormal (level 20), read after 5 min in 4 min: turnaround 9 min.
        _study(
            session,
            1,
            today,
            priority=20,
            claimed=5 * MIN,
            read=4 * MIN,
            label="abnormal",
            user=user,
        )
        # Normal (50), opened after 70 min (over the 60 min cap), turnaround 72 min.
        _study(session, 2, today, priority=50, claimed=70 * MIN, label="normal", user=user)
        # Normal (50) yesterday, turnaround 12 min, no label.
        _study(session, 3, yesterday, priority=50, claimed=10 * MIN, user=user)
        # Claimed but not completed: no turnaround, not waiting.
        _study(session, 4, today, priority=30, claimed=MIN, completed=False, user=user)
        # Unread: arrived 90 min ago (over the cap) and 20 min ago (not over).
        _study(session, 5, NOW - 90 * MIN, priority=50, user=user)
        _study(session, 6, NOW - 20 * MIN, priority=None, user=user)
        # Ten days ago, unread: outside the window, still the longest current wait.
        _study(session, 7, NOW - timedelta(days=10), priority=50, user=user)
        session.commit()
        return time_to_read_report(session, now=NOW, wait_cap=60 * MIN, days=7)


def test_turnaround_by_level_and_truth(figures: dict) -> None:
    assert figures["by_level"]["ABNORMAL_HIGH"] == {
        "n": 1,
        "mean": 540.0,
        "p50": 540.0,
        "p90": 540.0,
        "max": 540.0,
    }
    normal = figures["by_level"]["NORMAL"]
    assert normal["n"] == 2 and normal["p50"] == pytest.approx((72 + 12) / 2 * 60)
    assert set(figures["by_level"]) == {"ABNORMAL_HIGH", "NORMAL"}
    assert figures["by_truth"]["abnormal"]["p50"] == 540.0
    assert figures["by_truth"]["normal"]["p50"] == 72 * 60.0


def test_longest_wait_and_over_cap(figures: dict) -> None:
    waiting = figures["waiting"]
    assert waiting["unread"] == 3
    assert waiting["longest_wait_seconds"] == pytest.approx(10 * 86400)
    assert waiting["over_cap"] == 2  # 90 min and 10 days
    # In the window: study 2 (opened after 70 min) and study 5 (waiting 90 min).
    assert figures["window_over_cap"] == 2


def test_daily_trend(figures: dict) -> None:
    days = {d["day"]: d for d in figures["daily"]}
    assert list(days) == ["2026-11-28", "2026-11-29"]
    assert days["2026-11-28"]["arrived"] == 1
    assert days["2026-11-28"]["turnaround"]["p50"] == 12 * 60.0
    assert days["2026-11-29"]["arrived"] == 5
    assert days["2026-11-29"]["turnaround"]["n"] == 2
    assert days["2026-11-29"]["over_cap"] == 2


def test_metrics_expose_the_same_figures(
    figures: dict, session_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import generate_latest

    import worklist.metrics
    from worklist.metrics import make_registry

    monkeypatch.setattr(worklist.metrics, "utcnow", lambda: NOW)
    text = generate_latest(make_registry(session_factory, wait_cap=60 * MIN)).decode()
    assert 'triage_turnaround_seconds{group="level",stat="p50",value="ABNORMAL_HIGH"} 540.0' in text
    assert 'triage_turnaround_seconds{group="truth",stat="p50",value="normal"} 4320.0' in text
    assert 'triage_turnaround_studies{group="level",value="NORMAL"} 2.0' in text
    assert f"triage_read_wait_longest_seconds {10 * 86400:.1f}" in text
    assert 'triage_read_over_cap{scope="waiting"} 2.0' in text
    assert 'triage_read_over_cap{scope="window"} 2.0' in text


def test_simulator_input_from_the_database(figures: dict, session_factory) -> None:
    from worklist.benefit import cases_from_database

    with session_factory() as session:
        cases, durations = cases_from_database(session)
    # Studies 1 and 2 have a result and a label; reads completed: studies 1, 2, 3.
    assert sorted(c.abnormal for c in cases) == [False, True]
    assert all(c.decision == "normal" and c.probability == 0.1 for c in cases)
    assert sorted(durations) == [120.0, 120.0, 240.0]
