"""Triage results in the database: claiming a revision, recording its result.

Plain functions over a session (the caller owns the transaction), used by the
triage worker. A study revision is worked on in three steps:

1. :func:`claim_revision` (one short transaction) checks that the revision is
   still the study's current one and not done yet, moves the study from
   ``queued`` to ``triaging`` and records a claim (worker, time, attempt count).
   A worker that batches several studies into one inference also claims other
   revisions that wait in ``queued`` (:func:`claim_waiting`); the tasks of those
   revisions then find them claimed (left to that worker) or done.
2. The worker reads, selects, infers and writes its SR outside any transaction.
3. :func:`save_result` (one transaction) inserts the result, its images and its
   outbox rows, and moves the study to its final state when that revision is still
   current. The unique (study, revision) constraint makes a second, concurrent
   save fail, so a revision has exactly one result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worklist.core.clock import as_utc, utcnow
from worklist.tables import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Instance,
    Study,
    StudyState,
    TriageClaim,
    TriageImage,
    TriageResult,
)

log = logging.getLogger(__name__)

__all__ = [
    "Claim",
    "ClaimStatus",
    "ImageRecord",
    "InstanceRef",
    "OutboxObject",
    "ResultRecord",
    "claim_revision",
    "claim_waiting",
    "release_claim",
    "result_for",
    "save_result",
    "stalled_revisions",
]


class ClaimStatus(StrEnum):
    """What :func:`claim_revision` found."""

    CLAIMED = "claimed"
    """The revision is current and not done: work on it."""
    DONE = "done"
    """A result for this revision exists: do not redo it."""
    STALE = "stale"
    """The revision is not (or no longer) the one to triage: drop the message."""
    HELD = "held"
    """Another worker holds the revision (see ``leave`` of :func:`claim_revision`)."""


@dataclass(frozen=True)
class InstanceRef:
    """An instance of the claimed study (id, UID, spool path)."""

    id: int
    sop_instance_uid: str
    file_path: str


@dataclass(frozen=True)
class Claim:
    """Outcome of :func:`claim_revision`, with what the worker needs to know."""

    status: ClaimStatus
    study_id: int
    revision: int
    study_instance_uid: str = ""
    requested_priority: str | None = None
    queued_at: datetime | None = None
    claimed_at: datetime | None = None
    attempts: int = 0
    result_id: int | None = None
    instances: tuple[InstanceRef, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class ImageRecord:
    """One instance as the revision saw it."""

    instance_id: int | None
    sop_instance_uid: str
    evaluated: bool
    reason: str | None = None
    logit: float | None = None
    probability: float | None = None


@dataclass(frozen=True)
class OutboxObject:
    """A DICOM object of a result, other than its SR, to send to every destination."""

    sop_instance_uid: str
    file_path: str
    kind: str = DeliveryKind.HEATMAP_SC


@dataclass(frozen=True)
class ResultRecord:
    """Everything :func:`save_result` stores for one revision."""

    study_id: int
    revision: int
    status: str
    aggregation: str
    operating_point: str
    model_name: str
    model_version: str
    model_sha256: str
    priority: int
    priority_reason: str
    started_at: datetime
    finished_at: datetime
    reason: str | None = None
    decision: str | None = None
    probability: float | None = None
    score: float | None = None
    threshold: float | None = None
    model_manufacturer: str | None = None
    providers: str | None = None
    queued_at: datetime | None = None
    sr_sop_instance_uid: str | None = None
    sr_series_instance_uid: str | None = None
    sr_path: str | None = None
    images: Sequence[ImageRecord] = field(default_factory=tuple)
    destinations: Sequence[str] = field(default_factory=tuple)
    #: Sent after the SR (only with one): the heatmap Secondary Captures.
    objects: Sequence[OutboxObject] = field(default_factory=tuple)


def result_for(session: Session, *, study_id: int, revision: int) -> TriageResult | None:
    """Return the result of a study revision, or None.

    Parameters
    ----------
    session : Session
    study_id : int
    revision : int

    Returns
    -------
    TriageResult or None
    """
    return session.scalar(
        select(TriageResult).where(
            TriageResult.study_id == study_id, TriageResult.revision == revision
        )
    )


def claim_revision(
    session: Session,
    *,
    study_id: int,
    revision: int,
    worker: str,
    now: datetime | None = None,
    waiting_only: bool = False,
    leave: Callable[[str, datetime], bool] | None = None,
) -> Claim:
    """Claim a study revision for triage (see the module docstring).

    A revision already claimed (its worker died, or the message was delivered
    twice) is claimed again and its attempt count incremented: the caller gives up
    after a few attempts. The caller commits.

    Parameters
    ----------
    session : Session
    study_id : int
    revision : int
    worker : str
        Who claims it (``host:pid``), for the record.
    now : datetime, optional
    waiting_only : bool
        Claim it only while it waits (``queued``); a revision being triaged is
        ``held``.
    leave : callable, optional
        ``leave(claimed_by, claimed_at)`` of the current claim of a revision being
        triaged: True leaves the revision to that claimer (``held``), False claims
        it again.

    Returns
    -------
    Claim
    """
    now = now or utcnow()
    existing = result_for(session, study_id=study_id, revision=revision)
    if existing is not None:
        return Claim(ClaimStatus.DONE, study_id, revision, result_id=existing.id)
    study = session.get(Study, study_id)
    if study is None:
        return Claim(ClaimStatus.STALE, study_id, revision, detail="no such study")
    if study.revision != revision:
        return Claim(
            ClaimStatus.STALE, study_id, revision, detail=f"current revision is {study.revision}"
        )
    if study.state not in (StudyState.QUEUED, StudyState.TRIAGING):
        return Claim(ClaimStatus.STALE, study_id, revision, detail=f"study is {study.state}")
    claim = session.scalar(
        select(TriageClaim).where(
            TriageClaim.study_id == study_id, TriageClaim.revision == revision
        )
    )
    if study.state == StudyState.TRIAGING and claim is not None:
        left = leave is not None and leave(claim.claimed_by, as_utc(claim.claimed_at))
        if waiting_only or left:
            return Claim(
                ClaimStatus.HELD, study_id, revision, detail=f"claimed by {claim.claimed_by}"
            )
    states = [StudyState.QUEUED] if waiting_only else [StudyState.QUEUED, StudyState.TRIAGING]
    moved = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.revision == revision, Study.state.in_(states))
        .values(state=StudyState.TRIAGING)
    ).rowcount
    if not moved:
        if waiting_only:
            return Claim(ClaimStatus.HELD, study_id, revision, detail="claimed meanwhile")
        return Claim(ClaimStatus.STALE, study_id, revision, detail="study changed meanwhile")
    if claim is None:
        claim = TriageClaim(
            study_id=study_id, revision=revision, claimed_by=worker, claimed_at=now, attempts=1
        )
        session.add(claim)
    else:
        claim.claimed_by = worker
        claim.claimed_at = now
        claim.attempts = claim.attempts + 1
    session.flush()
    instances = session.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.file_path)
        .where(Instance.study_id == study_id)
        .order_by(Instance.id)
    ).all()
    return Claim(
        ClaimStatus.CLAIMED,
        study_id,
        revision,
        study_instance_uid=study.study_instance_uid,
        requested_priority=study.requested_priority,
        queued_at=as_utc(study.stable_at) if study.stable_at else None,
        claimed_at=now,
        attempts=claim.attempts,
        instances=tuple(InstanceRef(i, uid, path) for i, uid, path in instances),
    )


def claim_waiting(
    session: Session,
    *,
    worker: str,
    limit: int,
    exclude: int | None = None,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` other revisions that wait for triage, longest waiting first.

    For a worker that triages several studies in one inference: each revision is
    claimed with :func:`claim_revision` (``waiting_only``), so one being triaged
    elsewhere is skipped. The caller commits.

    Parameters
    ----------
    session : Session
    worker : str
        Who claims them (``host:pid``), for the record.
    limit : int
        At most this many.
    exclude : int, optional
        A study not to claim (the caller's own).
    now : datetime, optional

    Returns
    -------
    list of Claim
        The revisions claimed (status ``claimed``), in the order they became stable.
    """
    if limit <= 0:
        return []
    query = select(Study.id, Study.revision).where(Study.state == StudyState.QUEUED)
    if exclude is not None:
        query = query.where(Study.id != exclude)
    waiting = session.execute(query.order_by(Study.stable_at, Study.id).limit(limit)).all()
    claims = [
        claim_revision(
            session,
            study_id=int(study_id),
            revision=int(revision),
            worker=worker,
            now=now,
            waiting_only=True,
        )
        for study_id, revision in waiting
    ]
    return [c for c in claims if c.status is ClaimStatus.CLAIMED]


def release_claim(
    session: Session, *, study_id: int, revision: int, now: datetime | None = None
) -> bool:
    """Give a claimed revision back without a result, as if the attempt never happened.

    For a worker that hit a transient local failure (the results directory full): the
    study moves from ``triaging`` back to ``queued`` with ``dispatched_at = now``, so
    that :func:`stalled_revisions` sends it again after the lease, and the claim's
    attempt count is decremented, so that waiting for space never counts towards
    giving the revision up. The caller commits.

    Parameters
    ----------
    session : Session
    study_id : int
    revision : int
    now : datetime, optional

    Returns
    -------
    bool
        True when the study was still at that revision and ``triaging``.
    """
    now = now or utcnow()
    moved = session.execute(
        update(Study)
        .where(
            Study.id == study_id,
            Study.revision == revision,
            Study.state == StudyState.TRIAGING,
        )
        .values(state=StudyState.QUEUED, dispatched_at=now)
    ).rowcount
    session.execute(
        update(TriageClaim)
        .where(
            TriageClaim.study_id == study_id,
            TriageClaim.revision == revision,
            TriageClaim.attempts > 0,
        )
        .values(attempts=TriageClaim.attempts - 1)
    )
    return bool(moved)


def save_result(session: Session, *, record: ResultRecord, now: datetime | None = None) -> int:
    """Insert the result of a revision, its images and its outbox rows (its SR, then its
    other objects, to every destination).

    The study moves to the result's status when it is still at that revision and
    ``triaging`` (a study re-opened by a late instance stays ``receiving``). The
    caller commits; a concurrent save of the same revision raises
    :class:`sqlalchemy.exc.IntegrityError` at flush.

    Parameters
    ----------
    session : Session
    record : ResultRecord
    now : datetime, optional

    Returns
    -------
    int
        The result's id.
    """
    now = now or utcnow()
    result = TriageResult(
        study_id=record.study_id,
        revision=record.revision,
        status=record.status,
        reason=(record.reason or None) and record.reason[:512],
        decision=record.decision,
        probability=record.probability,
        score=record.score,
        aggregation=record.aggregation,
        operating_point=record.operating_point,
        threshold=record.threshold,
        model_name=record.model_name,
        model_version=record.model_version,
        model_sha256=record.model_sha256,
        model_manufacturer=record.model_manufacturer,
        providers=record.providers,
        priority=record.priority,
        priority_reason=record.priority_reason[:256],
        queued_at=record.queued_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        sr_sop_instance_uid=record.sr_sop_instance_uid,
        sr_series_instance_uid=record.sr_series_instance_uid,
        sr_path=record.sr_path,
    )
    session.add(result)
    session.flush()
    for image in record.images:
        session.add(
            TriageImage(
                result_id=result.id,
                instance_id=image.instance_id,
                sop_instance_uid=image.sop_instance_uid,
                evaluated=image.evaluated,
                reason=(image.reason or None) and image.reason[:512],
                logit=image.logit,
                probability=image.probability,
            )
        )
    if record.sr_path and record.sr_sop_instance_uid:
        # The SR rows first (inserted in this order: lower ids, sent first), then the rest.
        sent = [OutboxObject(record.sr_sop_instance_uid, record.sr_path, DeliveryKind.SR)]
        sent += list(dict.fromkeys(record.objects))
        for item in sent:
            for destination in dict.fromkeys(record.destinations):
                session.add(
                    Delivery(
                        result_id=result.id,
                        destination=destination,
                        sop_instance_uid=item.sop_instance_uid,
                        kind=item.kind,
                        file_path=item.file_path,
                        state=DeliveryState.PENDING,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
    session.execute(
        update(Study)
        .where(
            Study.id == record.study_id,
            Study.revision == record.revision,
            Study.state == StudyState.TRIAGING,
        )
        .values(state=record.status)
    )
    session.flush()
    return result.id


def stalled_revisions(
    session: Session, *, lease_seconds: float, now: datetime | None = None, limit: int = 100
) -> list[tuple[int, int]]:
    """Study revisions whose triage seems lost, to be sent to the queue again.

    A revision is stalled when the study is ``triaging`` and its claim is older
    than the lease (the worker died and the broker did not redeliver), or when it
    is ``queued``, was dispatched longer than the lease ago and never claimed (the
    message was lost). Re-sending is safe: the task is idempotent.

    Parameters
    ----------
    session : Session
    lease_seconds : float
    now : datetime, optional
    limit : int

    Returns
    -------
    list of (study_id, revision)
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    triaging = session.execute(
        select(Study.id, Study.revision)
        .join(
            TriageClaim,
            (TriageClaim.study_id == Study.id) & (TriageClaim.revision == Study.revision),
        )
        .where(Study.state == StudyState.TRIAGING, TriageClaim.claimed_at < cutoff)
        .limit(limit)
    ).all()
    queued = session.execute(
        select(Study.id, Study.revision)
        .where(
            Study.state == StudyState.QUEUED,
            Study.dispatched_at.is_not(None),
            Study.dispatched_at < cutoff,
        )
        .limit(limit)
    ).all()
    return [(int(a), int(b)) for a, b in [*triaging, *queued]]
