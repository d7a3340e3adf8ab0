"""Live time-to-read figures from the node's own timestamps.

What the radiologists' reading order does, measured where it happens: from each
study's arrival (``Study.first_received_at``), its first triage result, and its
reading state (``StudyRead.claimed_at`` / ``completed_at``), with the definitions
of :mod:`worklist.turnaround` (the same as the reading-order simulator):

- turnaround by stored priority level and by truth (the radiologists' latest
  label, where there is one), over the studies that arrived in the window;
- the longest current wait of a study nobody has opened yet (any age);
- studies over the wait cap: waiting now, and those of the window that waited
  longer before they were opened;
- a daily trend (UTC day of arrival).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worklist.core.clock import as_utc
from worklist.priority import PRIORITY_DISPLAY
from worklist.tables import Feedback, Study, StudyRead, TriageResult
from worklist.turnaround import StudyTimes, daily_trend, over_cap, summarize, turnaround, wait

__all__ = ["study_timelines", "time_to_read_report"]


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else as_utc(value).timestamp()


def _level_name(level: int | None) -> str:
    if level is None:
        return "PENDING"
    return PRIORITY_DISPLAY.get(level, (str(level),))[0]


def study_timelines(session: Session, *, since: datetime | None = None) -> list[StudyTimes]:
    """Every study's reading timeline (epoch seconds), optionally only recent arrivals.

    The level is the priority stored with the study's latest triage result (None
    without one); the truth is its latest radiologist label (None without one).

    Parameters
    ----------
    session : Session
    since : datetime, optional
        Only studies that arrived at or after this time.

    Returns
    -------
    list of StudyTimes
    """
    query = select(
        Study.id, Study.first_received_at, StudyRead.claimed_at, StudyRead.completed_at
    ).outerjoin(StudyRead, StudyRead.study_id == Study.id)
    if since is not None:
        query = query.where(Study.first_received_at >= since)
    rows = session.execute(query).all()
    ids = [r.id for r in rows]
    levels: dict[int, int] = {}
    truths: dict[int, str] = {}
    if ids:
        for study_id, priority in session.execute(
            select(TriageResult.study_id, TriageResult.priority)
            .where(TriageResult.study_id.in_(ids))
            .order_by(TriageResult.study_id, TriageResult.revision)
        ):
            levels[study_id] = priority
        for study_id, label in session.execute(
            select(Feedback.study_id, Feedback.label)
            .where(Feedback.study_id.in_(ids))
            .order_by(Feedback.updated_at, Feedback.id)
        ):
            truths[study_id] = label
    return [
        StudyTimes(
            arrival=_epoch(r.first_received_at),  # type: ignore[arg-type]
            claimed=_epoch(r.claimed_at),
            completed=_epoch(r.completed_at),
            level=levels.get(r.id),
            truth=truths.get(r.id),
        )
        for r in rows
    ]


def time_to_read_report(
    session: Session, *, now: datetime, wait_cap: timedelta, days: int = 7
) -> dict[str, Any]:
    """Turnaround, waits and over-cap counts of the worklist (see the module docstring).

    Parameters
    ----------
    session : Session
    now : datetime
        Aware time the current waits are measured at.
    wait_cap : timedelta
    days : int
        Window of arrivals for the turnaround figures and the daily trend (UTC days,
        today included).

    Returns
    -------
    dict
        ``window_days``, ``wait_cap_seconds``, ``by_level`` and ``by_truth`` (name ->
        summary of turnaround seconds: ``n``, ``mean``, ``p50``, ``p90``, ``max``),
        ``waiting`` (``unread``, ``longest_wait_seconds``, ``over_cap``),
        ``window_over_cap`` (studies of the window opened after the cap or still
        waiting over it) and ``daily`` (``day``, ``arrived``, ``turnaround``,
        ``over_cap``).
    """
    now_s = as_utc(now).timestamp()
    cap_s = wait_cap.total_seconds()
    start = datetime.combine(
        (as_utc(now) - timedelta(days=days - 1)).date(), datetime.min.time(), tzinfo=UTC
    )
    unread = [s for s in study_timelines(session) if s.claimed is None]
    recent = study_timelines(session, since=start)
    waits = [wait(s, now_s) for s in unread]

    by_level: dict[str, list[float]] = {}
    by_truth: dict[str, list[float]] = {}
    for study in recent:
        value = turnaround(study)
        if value is None:
            continue
        by_level.setdefault(_level_name(study.level), []).append(value)
        if study.truth in ("normal", "abnormal"):
            by_truth.setdefault(study.truth, []).append(value)
    order = [name for name, _l, _c in PRIORITY_DISPLAY.values()] + ["PENDING"]
    return {
        "window_days": days,
        "wait_cap_seconds": cap_s,
        "by_level": {k: asdict(summarize(by_level[k])) for k in order if k in by_level},
        "by_truth": {k: asdict(summarize(v)) for k, v in sorted(by_truth.items())},
        "waiting": {
            "unread": len(unread),
            "longest_wait_seconds": max(waits, default=None),
            "over_cap": sum(over_cap(w, cap_s) for w in waits),
        },
        "window_over_cap": sum(over_cap(wait(s, now_s), cap_s) for s in recent),
        "daily": [
            {**asdict(b), "turnaround": asdict(b.turnaround)}
            for b in daily_trend(recent, now=now_s, cap_seconds=cap_s)
        ],
    }
