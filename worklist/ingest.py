"""Recording received instances: plain functions over a session, no network."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, case, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from worklist.core.clock import utcnow
from worklist.core.contracts import InstanceInfo, RecordOutcome
from worklist.tables import Instance, Series, Study, StudyState

log = logging.getLogger(__name__)


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


_studies = Study.__table__
_series = Series.__table__
_instances = Instance.__table__

# The statements are built once: SQLAlchemy then reuses their cache keys and
# compiled forms, and each call only binds parameters.
_FIND_IDS = select(
    select(_instances.c.id)
    .where(_instances.c.sop_instance_uid == bindparam("sop_uid"))
    .scalar_subquery()
    .label("instance_id"),
    select(_studies.c.id)
    .where(_studies.c.study_instance_uid == bindparam("study_uid"))
    .scalar_subquery()
    .label("study_id"),
    select(_series.c.id)
    .where(_series.c.series_instance_uid == bindparam("series_uid"))
    .scalar_subquery()
    .label("series_id"),
    select(_studies.c.patient_id)
    .where(_studies.c.study_instance_uid == bindparam("study_uid"))
    .scalar_subquery()
    .label("study_patient_id"),
)
# A held study stays held whatever arrives; otherwise it is receiving (or held now).
_NEXT_STATE = case(
    (_studies.c.state == StudyState.PATIENT_MISMATCH, _studies.c.state),
    else_=bindparam("b_state"),
)
_REFRESH_INSTANCE = (
    update(_instances)
    .where(_instances.c.id == bindparam("b_instance_id"))
    .values(
        receive_count=_instances.c.receive_count + 1,
        received_at=bindparam("b_now"),
        **{f: bindparam(f"b_{f}") for f in _INSTANCE_FIELDS},
    )
    .returning(_instances.c.study_id)
)
_TOUCH_RECEIVING_STUDY = (
    update(_studies)
    .where(_studies.c.id == bindparam("b_study_id"), _studies.c.state == StudyState.RECEIVING)
    .values(last_received_at=bindparam("b_now"))
)
_COUNT_NEW_INSTANCE = (
    update(_studies)
    .where(_studies.c.id == bindparam("b_study_id"))
    .values(
        last_received_at=bindparam("b_now"),
        instance_count=_studies.c.instance_count + 1,
        state=_NEXT_STATE,
    )
)
_REOPEN_STUDY = (
    update(_studies)
    .where(_studies.c.id == bindparam("b_study_id"))
    .values(last_received_at=bindparam("b_now"), state=_NEXT_STATE)
)
_STUDY_ID = select(_studies.c.id).where(_studies.c.study_instance_uid == bindparam("uid"))
_STUDY_PATIENT = select(_studies.c.patient_id).where(_studies.c.id == bindparam("b_study_id"))
_SERIES_ID = select(_series.c.id).where(_series.c.series_instance_uid == bindparam("uid"))

_DIALECT_INSERTS: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite_insert,
    "postgresql": postgresql_insert,
}


@dataclass(frozen=True)
class _Inserts:
    study: Any
    series: Any
    instance: Any


@cache
def _inserts(dialect: str) -> _Inserts:
    """``INSERT ... ON CONFLICT (uid) DO NOTHING RETURNING id`` for the three tables."""
    try:
        insert = _DIALECT_INSERTS[dialect]
    except KeyError:
        raise NotImplementedError(f"record_instance does not support {dialect!r}") from None

    def build(table: Any, uid_column: str) -> Any:
        return (
            insert(table).on_conflict_do_nothing(index_elements=[uid_column]).returning(table.c.id)
        )

    return _Inserts(
        study=build(_studies, "study_instance_uid"),
        series=build(_series, "series_instance_uid"),
        instance=build(_instances, "sop_instance_uid"),
    )


def _insert_or_get_id(
    connection: Connection, insert: Any, get_id: Any, uid: str, values: dict[str, Any]
) -> tuple[int, bool]:
    """Insert a row unless its UID exists (``ON CONFLICT DO NOTHING``).

    Returns its id, and whether this call created it.
    """
    inserted = connection.execute(insert, values).scalar()
    if inserted is not None:
        return int(inserted), True
    # Another association created it at the same moment: it is there now.
    return int(connection.execute(get_id, {"uid": uid}).scalar_one()), False


def patient_mismatch(study_patient_id: str | None, instance_patient_id: str | None) -> bool:
    """True when an instance's Patient ID is not its study's (absent counts as a value).

    Parameters
    ----------
    study_patient_id, instance_patient_id : str or None
        As read from the headers (stripped; None when absent or empty).

    Returns
    -------
    bool
    """
    return (study_patient_id or "") != (instance_patient_id or "")


def _next_state(study_id: int, study_patient_id: str | None, info: InstanceInfo) -> StudyState:
    """RECEIVING, or PATIENT_MISMATCH (logged, without the IDs) for another patient's instance."""
    if not patient_mismatch(study_patient_id, info.patient_id):
        return StudyState.RECEIVING
    log.warning(
        "instance %s carries another Patient ID than its study %s (study id %d): the study "
        "is held for an administrator and not triaged until released",
        info.sop_instance_uid,
        info.study_instance_uid,
        study_id,
    )
    return StudyState.PATIENT_MISMATCH


def record_instance(
    session: Session,
    *,
    info: InstanceInfo,
    now: datetime | None = None,
    content_changed: bool = False,
) -> RecordOutcome:
    """Record a received instance, idempotently, and (re-)open its study.

    A new SOP Instance UID adds an instance row and sets its study back to
    ``receiving``, whatever state it was in, so that it is triaged (again) once
    stable. A known SOP Instance UID refreshes the row (path, size, sender) and
    counts the receipt; it extends the quiet period of a study that is still
    receiving, but does not re-open a triaged one, unless ``content_changed``
    (the sender's new content replaced the stored one): then it re-opens it like a
    new instance (:attr:`RecordOutcome.NEW_VERSION`).

    An instance whose Patient ID is not its study's (:func:`patient_mismatch`)
    puts the study in ``patient_mismatch`` instead of ``receiving``; a study in
    that state stays there whatever arrives, until :func:`release_study`.

    Plain Core statements on the session's connection, no ORM objects and no
    savepoints: one SELECT finds the instance, study and series ids at once;
    missing study and series rows are inserted with ``INSERT ... ON CONFLICT DO
    NOTHING`` (SQLite and PostgreSQL), so two associations creating the same study
    cannot fail each other. For a new instance in a known series that is three
    statements: the SELECT, the instance INSERT and the atomic study UPDATE.

    The caller commits; on any exception it must roll back and report a failure
    status to the sender.

    Parameters
    ----------
    session : Session
        An open session; this function executes but does not commit.
    info : InstanceInfo
        The instance's header values and spool location.
    now : datetime, optional
        Receipt time (default: now, UTC).
    content_changed : bool
        The caller found the stored copy of a known instance different from this one.

    Returns
    -------
    RecordOutcome
    """
    now = now or utcnow()
    connection = session.connection()
    found = connection.execute(
        _FIND_IDS,
        {
            "sop_uid": info.sop_instance_uid,
            "study_uid": info.study_instance_uid,
            "series_uid": info.series_instance_uid,
        },
    ).one()

    if found.instance_id is not None:
        study_id = connection.execute(
            _REFRESH_INSTANCE,
            {
                "b_instance_id": found.instance_id,
                "b_now": now,
                **{f"b_{f}": getattr(info, f) for f in _INSTANCE_FIELDS},
            },
        ).scalar_one()
        if content_changed:
            state = _next_state(study_id, found.study_patient_id, info)
            connection.execute(
                _REOPEN_STUDY, {"b_study_id": study_id, "b_now": now, "b_state": state}
            )
            return RecordOutcome.NEW_VERSION
        connection.execute(_TOUCH_RECEIVING_STUDY, {"b_study_id": study_id, "b_now": now})
        return RecordOutcome.DUPLICATE

    inserts = _inserts(connection.dialect.name)
    study_id = found.study_id
    study_patient_id = found.study_patient_id
    if study_id is None:
        study_id, created = _insert_or_get_id(
            connection,
            inserts.study,
            _STUDY_ID,
            info.study_instance_uid,
            {
                "study_instance_uid": info.study_instance_uid,
                "state": StudyState.RECEIVING,
                "revision": 0,
                "instance_count": 0,
                "first_received_at": now,
                "last_received_at": now,
                **{f: getattr(info, f) for f in _STUDY_FIELDS},
            },
        )
        study_patient_id = (
            info.patient_id
            if created
            else connection.execute(_STUDY_PATIENT, {"b_study_id": study_id}).scalar()
        )
    series_id = found.series_id
    if series_id is None:
        series_id, _ = _insert_or_get_id(
            connection,
            inserts.series,
            _SERIES_ID,
            info.series_instance_uid,
            {
                "study_id": study_id,
                "series_instance_uid": info.series_instance_uid,
                **{f: getattr(info, f) for f in _SERIES_FIELDS},
            },
        )
    inserted = connection.execute(
        inserts.instance,
        {
            "study_id": study_id,
            "series_id": series_id,
            "sop_instance_uid": info.sop_instance_uid,
            "received_at": now,
            "receive_count": 1,
            **{f: getattr(info, f) for f in _INSTANCE_FIELDS},
        },
    ).scalar()
    if inserted is None:
        # The same instance arrived on two associations at once: the other one won.
        return RecordOutcome.DUPLICATE
    # One atomic statement, so a concurrent stability decision cannot overwrite it.
    state = _next_state(study_id, study_patient_id, info)
    connection.execute(
        _COUNT_NEW_INSTANCE, {"b_study_id": study_id, "b_now": now, "b_state": state}
    )
    return RecordOutcome.NEW


def release_study(
    session: Session, study_instance_uid: str, *, now: datetime | None = None
) -> bool:
    """Release a study held for a patient mismatch: it is triaged again once stable.

    For an administrator who has checked the study (and removed the other patient's
    instance at the source, or found the IDs to be the same patient). The caller
    commits.

    Parameters
    ----------
    session : Session
    study_instance_uid : str
    now : datetime, optional
        Becomes the study's last receipt time (the quiet period starts again).

    Returns
    -------
    bool
        True when the study was held and is now receiving.
    """
    moved = session.execute(
        update(Study)
        .where(
            Study.study_instance_uid == study_instance_uid,
            Study.state == StudyState.PATIENT_MISMATCH,
        )
        .values(state=StudyState.RECEIVING, last_received_at=now or utcnow())
    ).rowcount
    return bool(moved)
