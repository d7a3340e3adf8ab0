"""Study completeness: the quiet-period rule and the exactly-once hand-off.

A study is *stable* when no new instance has arrived for ``quiet_seconds``. The
hand-off happens in two committed steps, so that a crash at any point neither loses
a study nor triages a revision twice:

1. :func:`mark_stable_studies` moves each stable ``receiving`` study to ``queued``
   and increments its revision, in one conditional UPDATE per study.
2. :func:`dispatch_queued` sends each ``queued`` study whose revision was not yet
   dispatched to the queue, then records ``dispatched_at``. A crash between the two
   re-sends the same (study, revision) after a restart; the triage task ignores a
   revision that is no longer current or already done, so it runs once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worklist.core.clock import as_utc, utcnow
from worklist.core.contracts import TriageQueue
from worklist.tables import Study, StudyState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handoff:
    """A study revision that became stable."""

    study_id: int
    revision: int


def mark_stable_studies(
    session: Session, *, quiet_seconds: float, now: datetime | None = None, limit: int = 100
) -> list[Handoff]:
    """Move every study quiet for ``quiet_seconds`` from ``receiving`` to ``queued``.

    Parameters
    ----------
    session : Session
        Open session; the caller commits.
    quiet_seconds : float
        The quiet period.
    now : datetime, optional
        Current time (default: now, UTC).
    limit : int
        At most this many studies per call.

    Returns
    -------
    list of Handoff
        The studies this call moved, with their new revision.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_seconds)
    candidates = session.scalars(
        select(Study.id)
        .where(Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff)
        .order_by(Study.last_received_at)
        .limit(limit)
    ).all()
    moved: list[Handoff] = []
    for study_id in candidates:
        result = session.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.state == StudyState.RECEIVING,
                Study.last_received_at <= cutoff,
            )
            .values(
                state=StudyState.QUEUED,
                revision=Study.revision + 1,
                stable_at=now,
                dispatched_at=None,
            )
            .returning(Study.revision)
        )
        revision = result.scalar_one_or_none()
        if revision is not None:
            moved.append(Handoff(study_id, revision))
    return moved


def seconds_until_next_stable(
    session: Session, *, quiet_seconds: float, now: datetime | None = None
) -> float | None:
    """Seconds until the earliest ``receiving`` study is quiet for ``quiet_seconds``.

    Parameters
    ----------
    session : Session
    quiet_seconds : float
        The quiet period.
    now : datetime, optional
        Current time (default: now, UTC).

    Returns
    -------
    float or None
        0 when one is stable already; None when no study is receiving.
    """
    now = now or utcnow()
    earliest = session.scalar(
        select(func.min(Study.last_received_at)).where(Study.state == StudyState.RECEIVING)
    )
    if earliest is None:
        return None
    due = as_utc(earliest) + timedelta(seconds=quiet_seconds)
    return max(0.0, (due - now).total_seconds())


def dispatch_queued(session_factory: sessionmaker, queue: TriageQueue) -> list[Handoff]:
    """Send every queued, not yet dispatched study revision to ``queue``.

    Parameters
    ----------
    session_factory : sessionmaker
        Makes the sessions (one short transaction per study).
    queue : TriageQueue
        The triage queue.

    Returns
    -------
    list of Handoff
        The revisions sent. A queue failure is logged and the revision stays
        undispatched, to be sent on the next call.
    """
    with session_factory() as session:
        pending = session.execute(
            select(Study.id, Study.revision)
            .where(Study.state == StudyState.QUEUED, Study.dispatched_at.is_(None))
            .order_by(Study.stable_at)
        ).all()
    sent: list[Handoff] = []
    for study_id, revision in pending:
        try:
            queue.enqueue(study_id, revision)
        except Exception as exc:  # noqa: BLE001 - any broker failure: retry next round
            log.warning("could not enqueue study %s revision %s: %s", study_id, revision, exc)
            break
        with session_factory.begin() as session:
            session.execute(
                update(Study)
                .where(Study.id == study_id, Study.revision == revision)
                .values(dispatched_at=utcnow())
            )
        log.info("study %s revision %s handed to triage", study_id, revision)
        sent.append(Handoff(study_id, revision))
    return sent


def run_stability_round(
    session_factory: sessionmaker, queue: TriageQueue, *, quiet_seconds: float
) -> list[Handoff]:
    """One round of the watcher: mark stable studies, then dispatch what is queued.

    Parameters
    ----------
    session_factory : sessionmaker
    queue : TriageQueue
    quiet_seconds : float

    Returns
    -------
    list of Handoff
        The revisions dispatched in this round.
    """
    with session_factory.begin() as session:
        moved = mark_stable_studies(session, quiet_seconds=quiet_seconds)
    for handoff in moved:
        log.info("study %s is stable (revision %s)", handoff.study_id, handoff.revision)
    return dispatch_queued(session_factory, queue)
