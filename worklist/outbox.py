"""The SR outbox: one row per (result, destination), delivered at least once.

Plain functions over a session; the caller owns the transaction. A row moves::

    pending --claim--> sending --ok--> delivered
       ^                  |
       +---- retry -------+ (attempts < max: next_attempt_at = now + backoff)
                          +---- give up ----> failed (attempts == max)

A ``sending`` row carries a lease; when its worker dies the lease expires and the
row is due again, so nothing is lost when a worker or the destination restarts.
Each row is independent: one failing destination never holds back the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from worklist.core.clock import utcnow
from worklist.tables import Delivery, DeliveryState, Study, StudyState, TriageClaim

log = logging.getLogger(__name__)

__all__ = [
    "DeliveryJob",
    "claim_delivery",
    "due_deliveries",
    "mark_delivered",
    "mark_failed_attempt",
    "mark_redispatched",
]


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed outbox row: what to send where."""

    id: int
    destination: str
    file_path: str
    sop_instance_uid: str
    attempts: int


def _due_clause(now: datetime):  # type: ignore[no-untyped-def]
    return or_(
        (Delivery.state == DeliveryState.PENDING) & (Delivery.next_attempt_at <= now),
        (Delivery.state == DeliveryState.SENDING) & (Delivery.lease_until < now),
    )


def due_deliveries(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[int]:
    """Ids of outbox rows due for an attempt (pending and due, or with an expired lease).

    Parameters
    ----------
    session : Session
    now : datetime, optional
    limit : int

    Returns
    -------
    list of int
    """
    now = now or utcnow()
    return list(
        session.scalars(
            select(Delivery.id)
            .where(_due_clause(now))
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        )
    )


def claim_delivery(
    session: Session,
    *,
    delivery_id: int,
    lease_seconds: float,
    now: datetime | None = None,
    force: bool = False,
) -> DeliveryJob | None:
    """Take an outbox row for one attempt, if it is due (one conditional UPDATE).

    Parameters
    ----------
    session : Session
    delivery_id : int
    lease_seconds : float
        How long the attempt may take before another worker may take the row.
    now : datetime, optional
    force : bool
        Claim a ``pending`` row even before its ``next_attempt_at`` (a task retry
        that is itself the backoff).

    Returns
    -------
    DeliveryJob or None
        None when the row is not due (delivered, failed, or taken by someone else).
    """
    now = now or utcnow()
    due = _due_clause(now)
    if force:
        due = or_(due, Delivery.state == DeliveryState.PENDING)
    moved = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, due)
        .values(
            state=DeliveryState.SENDING,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=Delivery.attempts + 1,
            updated_at=now,
        )
    ).rowcount
    if not moved:
        return None
    row = session.get(Delivery, delivery_id, populate_existing=True)
    if row is None:  # pragma: no cover - the UPDATE above just matched it
        return None
    return DeliveryJob(row.id, row.destination, row.file_path, row.sop_instance_uid, row.attempts)


def mark_delivered(session: Session, *, delivery_id: int, now: datetime | None = None) -> None:
    """Record a successful C-STORE.

    Parameters
    ----------
    session : Session
    delivery_id : int
    now : datetime, optional
    """
    now = now or utcnow()
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            state=DeliveryState.DELIVERED,
            delivered_at=now,
            updated_at=now,
            lease_until=None,
            last_error=None,
        )
    )


def mark_failed_attempt(
    session: Session,
    *,
    delivery_id: int,
    error: str,
    retry_in: float | None,
    now: datetime | None = None,
) -> str:
    """Record a failed attempt: back to ``pending`` with a delay, or ``failed``.

    Parameters
    ----------
    session : Session
    delivery_id : int
    error : str
        Readable cause (kept in ``last_error``).
    retry_in : float or None
        Seconds until the next attempt; None gives up (state ``failed``).
    now : datetime, optional

    Returns
    -------
    str
        The new state.
    """
    now = now or utcnow()
    state = DeliveryState.FAILED if retry_in is None else DeliveryState.PENDING
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            state=state,
            last_error=error[:1024],
            next_attempt_at=now + timedelta(seconds=retry_in or 0.0),
            lease_until=None,
            updated_at=now,
        )
    )
    return state.value


def mark_redispatched(
    session: Session, *, study_id: int, revision: int, now: datetime | None = None
) -> None:
    """Restart the lease of a study revision just sent to the queue again.

    Parameters
    ----------
    session : Session
    study_id : int
    revision : int
    now : datetime, optional
    """
    now = now or utcnow()
    session.execute(
        update(TriageClaim)
        .where(TriageClaim.study_id == study_id, TriageClaim.revision == revision)
        .values(claimed_at=now)
    )
    session.execute(
        update(Study)
        .where(Study.id == study_id, Study.revision == revision, Study.state == StudyState.QUEUED)
        .values(dispatched_at=now)
    )
