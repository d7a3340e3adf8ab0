"""Recording received instances: plain functions over a session, no network."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worklist.tables import Instance, Series, Study, StudyState

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (SQLite hands back naive ones)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class InstanceInfo:
    """What the database keeps of one received instance (read from its header).

    Attributes mirror :class:`worklist.tables.Instance`, :class:`~worklist.tables.Series`
    and :class:`~worklist.tables.Study` columns.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    size_bytes: int
    calling_ae: str | None = None
    peer_address: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    image_laterality: str | None = None
    photometric_interpretation: str | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    samples_per_pixel: int | None = None
    series_description: str | None = None
    series_number: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    requested_priority: str | None = None


class RecordOutcome(StrEnum):
    """What :func:`record_instance` did."""

    NEW = "new"
    """A new instance; its study is (again) receiving."""
    DUPLICATE = "duplicate"
    """The SOP Instance UID was known; the row was refreshed, nothing duplicated."""


_STUDY_FIELDS = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "patient_age",
    "accession_number",
    "study_id",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
    "requested_priority",
)
_SERIES_FIELDS = ("modality", "body_part_examined", "series_description", "series_number")
_INSTANCE_FIELDS = (
    "sop_class_uid",
    "transfer_syntax_uid",
    "modality",
    "body_part_examined",
    "view_position",
    "image_laterality",
    "photometric_interpretation",
    "rows",
    "columns",
    "number_of_frames",
    "samples_per_pixel",
    "patient_sex",
    "patient_age",
    "calling_ae",
    "peer_address",
    "file_path",
    "size_bytes",
)


def _get_or_create_study(session: Session, info: InstanceInfo, now: datetime) -> Study:
    uid = info.study_instance_uid
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is not None:
        return study
    try:
        with session.begin_nested():
            study = Study(
                study_instance_uid=uid,
                state=StudyState.RECEIVING,
                revision=0,
                instance_count=0,
                first_received_at=now,
                last_received_at=now,
                **{f: getattr(info, f) for f in _STUDY_FIELDS},
            )
            session.add(study)
    except IntegrityError:
        # Another association created it at the same moment.
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if study is None:  # pragma: no cover - would mean the database lost a row
            raise
    return study


def _get_or_create_series(session: Session, info: InstanceInfo, study: Study) -> Series:
    uid = info.series_instance_uid
    series = session.scalar(select(Series).where(Series.series_instance_uid == uid))
    if series is not None:
        return series
    try:
        with session.begin_nested():
            series = Series(
                study_id=study.id,
                series_instance_uid=uid,
                **{f: getattr(info, f) for f in _SERIES_FIELDS},
            )
            session.add(series)
    except IntegrityError:
        series = session.scalar(select(Series).where(Series.series_instance_uid == uid))
        if series is None:  # pragma: no cover
            raise
    return series


def record_instance(
    session: Session, *, info: InstanceInfo, now: datetime | None = None
) -> RecordOutcome:
    """Record a received instance, idempotently, and (re-)open its study.

    A new SOP Instance UID adds an instance row and sets its study back to
    ``receiving``, whatever state it was in, so that it is triaged (again) once
    stable. A known SOP Instance UID refreshes the row (path, size, sender) and
    counts the receipt; it extends the quiet period of a study that is still
    receiving, but does not re-open a triaged one.

    The caller commits; on any exception it must roll back and report a failure
    status to the sender.

    Parameters
    ----------
    session : Session
        An open session; this function flushes but does not commit.
    info : InstanceInfo
        The instance's header values and spool location.
    now : datetime, optional
        Receipt time (default: now, UTC).

    Returns
    -------
    RecordOutcome
    """
    now = now or utcnow()
    existing = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == info.sop_instance_uid)
    )
    if existing is not None:
        for field in _INSTANCE_FIELDS:
            setattr(existing, field, getattr(info, field))
        existing.received_at = now
        existing.receive_count = Instance.receive_count + 1
        session.execute(
            update(Study)
            .where(Study.id == existing.study_id, Study.state == StudyState.RECEIVING)
            .values(last_received_at=now)
        )
        session.flush()
        return RecordOutcome.DUPLICATE

    study = _get_or_create_study(session, info, now)
    series = _get_or_create_series(session, info, study)
    try:
        with session.begin_nested():
            session.add(
                Instance(
                    study_id=study.id,
                    series_id=series.id,
                    sop_instance_uid=info.sop_instance_uid,
                    received_at=now,
                    receive_count=1,
                    **{f: getattr(info, f) for f in _INSTANCE_FIELDS},
                )
            )
    except IntegrityError:
        # The same instance arrived on two associations at once: the other one won.
        return RecordOutcome.DUPLICATE
    # One atomic statement, so a concurrent stability decision cannot overwrite it.
    session.execute(
        update(Study)
        .where(Study.id == study.id)
        .values(
            last_received_at=now,
            instance_count=Study.instance_count + 1,
            state=StudyState.RECEIVING,
        )
    )
    session.flush()
    return RecordOutcome.NEW
