"""The outbox: one row per (result, destination, object), delivered at least once.

A result's objects are its SR and, with ``heatmap_to_pacs``, one heatmap Secondary
Capture per evaluated image (``Delivery.kind``); its SR rows are inserted, and so sent,
first.

Plain functions over a session; the caller owns the transaction. A row moves::

    pending --claim--> sending --ok--> delivered
       ^                  |
       +---- retry -------+ (within the horizon: next_attempt_at = now + backoff)
       |                  +---- give up ----> failed (horizon passed, or permanent)
       +------------------------ resend ---------+ (triage-node resend; horizon restarts)

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
from worklist.tables import Delivery, DeliveryKind, DeliveryState, Study, StudyState, TriageClaim

log = logging.getLogger(__name__)

__all__ = [
    "KIND_NAMES",
    "DeliveryJob",
    "claim_delivery",
    "due_deliveries",
    "mark_delivered",
    "mark_failed_attempt",
    "mark_redispatched",
    "failed_delivery_alert",
    "requeue_failed",
]


#: What each kind of outbox row is called in logs, messages and the command line.
KIND_NAMES = {DeliveryKind.SR.value: "SR", DeliveryKind.HEATMAP_SC.value: "heatmap SC"}


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed outbox row: what to send where."""

    id: int
    destination: str
    file_path: str
    sop_instance_uid: str
    attempts: int
    created_at: datetime
    kind: str = DeliveryKind.SR

    @property
    def what(self) -> str:
        """``SR`` or ``heatmap SC``."""
        return KIND_NAMES.get(self.kind, self.kind)


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
            .order_by(Delivery.next_attempt_at, Delivery.id)
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
    return DeliveryJob(
        row.id,
        row.destination,
        row.file_path,
        row.sop_instance_uid,
        row.attempts,
        row.created_at,
        row.kind,
    )


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


def requeue_failed(
    session: Session,
    *,
    study_instance_uid: str,
    destination_ae: str | None = None,
    now: datetime | None = None,
) -> list[Delivery]:
    """Put a study's ``failed`` deliveries (SRs and heatmap SCs) back in the outbox
    (``triage-node resend``).

    Each row becomes ``pending``, due now, with its attempts reset and its retry
    horizon restarted (``created_at`` = now; the result keeps the original time).

    Parameters
    ----------
    session : Session
    study_instance_uid : str
    destination_ae : str, optional
        Only the destinations with this AE title.
    now : datetime, optional

    Returns
    -------
    list of Delivery
        The rows re-queued.
    """
    from worklist.tables import TriageResult

    now = now or utcnow()
    rows = list(
        session.scalars(
            select(Delivery)
            .join(TriageResult, TriageResult.id == Delivery.result_id)
            .join(Study, Study.id == TriageResult.study_id)
            .where(
                Study.study_instance_uid == study_instance_uid,
                Delivery.state == DeliveryState.FAILED,
            )
            .order_by(Delivery.id)
        )
    )
    if destination_ae is not None:
        rows = [r for r in rows if r.destination.split("@", 1)[0] == destination_ae.strip()]
    for row in rows:
        row.state = DeliveryState.PENDING
        row.attempts = 0
        row.next_attempt_at = now
        row.created_at = now
        row.lease_until = None
        row.updated_at = now
    return rows


def failed_delivery_alert(session: Session) -> str | None:
    """The worklist banner while deliveries (SRs, heatmap SCs) have failed, else None.

    Parameters
    ----------
    session : Session
        The request's session (a second one could wait on its own write lock).

    Returns
    -------
    str or None
    """
    from sqlalchemy import func

    failed = dict(
        session.execute(
            select(Delivery.kind, func.count(Delivery.id))
            .where(Delivery.state == DeliveryState.FAILED)
            .group_by(Delivery.kind)
        ).all()
    )
    if not failed:
        return None
    results = failed.pop(DeliveryKind.SR.value, 0)
    heatmaps = sum(failed.values())
    what = " and ".join(
        text
        for count, text in (
            (results, f"{results} AI result(s)"),
            (heatmaps, f"{heatmaps} AI heatmap(s)"),
        )
        if count
    )
    return (
        f"{what} could not be sent to the PACS within the retry horizon. "
        "An administrator can re-send them with: triage-node resend STUDY_UID"
    )
