"""Read side of the worklist: plain functions over a session, typed results.

The worklist is the studies with their latest triage result and their reading state,
sorted by effective priority then by waiting time (oldest first), by the rules of
:mod:`worklist.priority`: a study that waited longer than the wait cap is moved up to
``OVERDUE`` (10), above every AI level; only ``STAT`` (0) stays above it. A study
without a result yet is ``PENDING`` at the hospital's requested level, or 40.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import quote

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from worklist.core.clock import as_utc
from worklist.dicom_values import format_person_name
from worklist.priority import (
    Priority,
    base_priority,
    base_priority_sql,
    effective_priority,
    effective_priority_sql,
    priority_display,
)
from worklist.tables import (
    AuditEvent,
    Delivery,
    Feedback,
    Instance,
    ReadState,
    Series,
    Study,
    StudyRead,
    StudyState,
    TriageImage,
    TriageResult,
    User,
)
from worklist.views import (
    DeliveryOut,
    FeedbackOut,
    ImageOut,
    ModelSummary,
    ResultOut,
    StudyDetail,
    WorklistFilters,
    WorklistRow,
)

__all__ = [
    "get_study",
    "labelled_studies_between",
    "latest_result",
    "list_worklist",
    "study_detail",
    "viewer_url",
]

STATE_REASONS: dict[str, str] = {
    StudyState.PATIENT_MISMATCH: (
        "Held, not triaged: an instance with another Patient ID arrived in this study. "
        "An administrator checks it, then runs `triage-node study release UID`."
    ),
}
"""Shown with the study's state where it needs an administrator."""

# Helpers -----------------------------------------------------------------------------


def viewer_url(template: str, study: Study) -> str | None:
    """Fill the viewer URL template for a study (None when no template is set).

    Parameters
    ----------
    template : str
        With ``{study_uid}`` and/or ``{accession_number}``.
    study : Study

    Returns
    -------
    str or None
    """
    if not template:
        return None
    values = {
        "study_uid": quote(study.study_instance_uid, safe=""),
        "accession_number": quote(study.accession_number or "", safe=""),
    }
    try:
        return template.format_map(values)
    except (KeyError, ValueError, IndexError):
        return None


def latest_result(session: Session, *, study_id: int) -> TriageResult | None:
    """The newest triage result of a study, or None.

    Parameters
    ----------
    session : Session
    study_id : int

    Returns
    -------
    TriageResult or None
    """
    return session.scalar(
        select(TriageResult)
        .where(TriageResult.study_id == study_id)
        .order_by(TriageResult.revision.desc())
        .limit(1)
    )


def labelled_studies_between(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> list[tuple[Study, str]]:
    """The studies a radiologist labelled, first received in ``[since, until)``, each
    with its latest label, by study id.

    Parameters
    ----------
    session : Session
    since, until : datetime, optional
        On the study's first reception.

    Returns
    -------
    list of (Study, str)
    """
    query = select(Study).where(Study.id.in_(select(Feedback.study_id)))
    if since is not None:
        query = query.where(Study.first_received_at >= since)
    if until is not None:
        query = query.where(Study.first_received_at < until)
    out: list[tuple[Study, str]] = []
    for study in session.scalars(query.order_by(Study.id)):
        label = session.scalar(
            select(Feedback.label)
            .where(Feedback.study_id == study.id)
            .order_by(Feedback.updated_at.desc(), Feedback.id.desc())
            .limit(1)
        )
        out.append((study, str(label)))
    return out


def get_study(session: Session, *, study_instance_uid: str) -> Study | None:
    """The study with this Study Instance UID, or None."""
    return session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))


def _modalities(session: Session, study_ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    if not study_ids:
        return {}
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_(study_ids))
    ):
        if modality:
            found[study_id].add(modality)
    return {k: sorted(v) for k, v in found.items()}


def _opened_by(session: Session, study_ids: Sequence[int]) -> dict[int, list[str]]:
    """Who opened each study's page (audited views by a signed-in person), oldest first."""
    found: dict[int, list[str]] = defaultdict(list)
    if not study_ids:
        return {}
    query = (
        select(AuditEvent.study_id, AuditEvent.username)
        .where(
            AuditEvent.study_id.in_(study_ids),
            AuditEvent.action == "view_study",
            AuditEvent.outcome == "success",
            AuditEvent.auth_method == "session",
            AuditEvent.username.is_not(None),
        )
        .order_by(AuditEvent.id)
    )
    for study_id, username in session.execute(query):
        if username not in found[study_id]:
            found[study_id].append(username)
    return dict(found)


def _row(
    study: Study,
    result: TriageResult | None,
    read: StudyRead | None,
    claimer: str | None,
    modalities: list[str],
    *,
    now: datetime,
    wait_cap: timedelta,
) -> WorklistRow:
    received = as_utc(study.first_received_at)
    base = base_priority(result.priority if result is not None else None, study.requested_priority)
    level = effective_priority(base, received, now=now, wait_cap=wait_cap)
    name, label, colour = priority_display(level, has_result=result is not None)
    end = as_utc(read.completed_at) if read is not None and read.completed_at else now
    return WorklistRow(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        patient_name=format_person_name(study.patient_name),
        patient_id=study.patient_id,
        patient_sex=study.patient_sex,
        patient_age=study.patient_age,
        study_date=study.study_date,
        study_description=study.study_description,
        modalities=modalities,
        state=study.state,
        state_reason=STATE_REASONS.get(study.state),
        read_state=read.state if read is not None else ReadState.UNREAD.value,
        claimed_by=claimer,
        priority=level,
        stored_priority=result.priority if result is not None else None,
        priority_name=name,
        priority_label=label,
        priority_colour=colour,
        priority_reason=(
            ("waited longer than the cap; " if level == Priority.OVERDUE else "")
            + result.priority_reason
            if result is not None
            else None
        ),
        decision=result.decision if result is not None else None,
        probability=result.probability if result is not None else None,
        received_at=received,
        waiting_seconds=max(0.0, (end - received).total_seconds()),
        triaged_at=as_utc(result.finished_at) if result is not None else None,
        instance_count=study.instance_count,
        revision=study.revision,
    )


def _dicom_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def _latest_results(session: Session, study_ids: Sequence[int]) -> dict[int, TriageResult]:
    latest: dict[int, TriageResult] = {}
    if not study_ids:
        return latest
    for result in session.scalars(
        select(TriageResult)
        .where(TriageResult.study_id.in_(study_ids))
        .order_by(TriageResult.study_id, TriageResult.revision)
    ):
        latest[result.study_id] = result
    return latest


def list_worklist(
    session: Session,
    *,
    filters: WorklistFilters,
    now: datetime,
    wait_cap: timedelta,
) -> list[WorklistRow]:
    """The worklist: filtered, sorted by effective priority then waiting time.

    One query filters, orders and pages in the database (SQLite and PostgreSQL): the
    effective priority, wait cap included, is computed in it
    (:func:`~worklist.priority.effective_priority_sql` over the latest result's
    stored priority), and only the studies in the asked reading states are read,
    through ``ix_studies_read_state_received``; the page's studies come with their
    reading state, and two more queries load their results and modalities.

    Parameters
    ----------
    session : Session
    filters : WorklistFilters
    now : datetime
        Aware UTC time the waiting times and the wait cap are measured at.
    wait_cap : timedelta
        See the module docstring.

    Returns
    -------
    list of WorklistRow
        At most ``filters.limit`` rows from ``filters.offset`` on, in order of
        (effective priority, arrival, Study Instance UID).
    """
    stored = (
        select(TriageResult.priority)
        .where(TriageResult.study_id == Study.id)
        .order_by(TriageResult.revision.desc())
        .limit(1)
        .scalar_subquery()
    )
    level = effective_priority_sql(
        base_priority_sql(stored, Study.requested_priority),
        Study.first_received_at,
        now=now,
        wait_cap=wait_cap,
    ).label("level")
    read_states = filters.read_state or [ReadState.UNREAD.value, ReadState.CLAIMED.value]
    query = select(Study.id, level).where(Study.read_state.in_(read_states))
    if filters.state:
        query = query.where(Study.state.in_(filters.state))
    if filters.date_from is not None:
        start = datetime.combine(filters.date_from, time.min, tzinfo=UTC)
        query = query.where(
            or_(
                Study.study_date >= _dicom_date(filters.date_from),
                and_(Study.study_date.is_(None), Study.first_received_at >= start),
            )
        )
    if filters.date_to is not None:
        end = datetime.combine(filters.date_to + timedelta(days=1), time.min, tzinfo=UTC)
        query = query.where(
            or_(
                Study.study_date <= _dicom_date(filters.date_to),
                and_(Study.study_date.is_(None), Study.first_received_at < end),
            )
        )
    if filters.received_within_days is not None:
        query = query.where(
            Study.first_received_at >= now - timedelta(days=filters.received_within_days)
        )
    if filters.modality:
        wanted = [m.upper() for m in filters.modality]
        query = query.where(
            exists().where(Series.study_id == Study.id, Series.modality.in_(wanted))
        )
    if filters.priority:
        query = query.where(level.in_(sorted(set(filters.priority))))
    uid = Study.study_instance_uid
    if session.get_bind().dialect.name == "postgresql":
        uid = uid.collate("C")  # code-point order, as Python compares strings
    page = (
        query.order_by(level, Study.first_received_at, uid)
        .offset(filters.offset)
        .limit(filters.limit)
        .subquery("page")
    )
    records = session.execute(
        select(Study, StudyRead, User.username)
        .join(page, page.c.id == Study.id)
        .outerjoin(StudyRead, StudyRead.study_id == Study.id)
        .outerjoin(User, User.id == StudyRead.user_id)
        .order_by(page.c.level, Study.first_received_at, uid)
    ).all()
    ids = [study.id for study, _read, _claimer in records]
    results = _latest_results(session, ids)
    modalities = _modalities(session, ids)
    opened = _opened_by(session, ids)
    return [
        _row(
            study,
            results.get(study.id),
            read,
            claimer,
            modalities.get(study.id, []),
            now=now,
            wait_cap=wait_cap,
        ).model_copy(update={"opened_by": opened.get(study.id, [])})
        for study, read, claimer in records
    ]


def _delivery_state(deliveries: Iterable[Delivery]) -> str:
    states = {d.state for d in deliveries}
    if not states:
        return "none"
    if states == {"delivered"}:
        return "delivered"
    if "failed" in states:
        return "failed" if states == {"failed"} else "partial"
    return "pending"


def study_detail(
    session: Session,
    *,
    study: Study,
    now: datetime,
    wait_cap: timedelta,
    viewer_url_template: str = "",
) -> StudyDetail:
    """Everything the study page and ``GET /api/studies/{uid}`` show.

    Parameters
    ----------
    session : Session
    study : Study
    now : datetime
    wait_cap : timedelta
    viewer_url_template : str
        See :func:`viewer_url`.

    Returns
    -------
    StudyDetail
    """
    result = latest_result(session, study_id=study.id)
    read = session.scalar(select(StudyRead).where(StudyRead.study_id == study.id))
    claimer = read.user.username if read is not None else None
    modalities = _modalities(session, [study.id]).get(study.id, [])
    row = _row(study, result, read, claimer, modalities, now=now, wait_cap=wait_cap)
    row = row.model_copy(update={"opened_by": _opened_by(session, [study.id]).get(study.id, [])})

    by_instance: dict[int, TriageImage] = {}
    by_sop: dict[str, TriageImage] = {}
    if result is not None:
        for image in result.images:
            if image.instance_id is not None:
                by_instance[image.instance_id] = image
            by_sop[image.sop_instance_uid] = image
    images = []
    instances = session.execute(
        select(Instance, Series)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study.id)
        .order_by(Series.series_number, Series.id, Instance.id)
    ).all()
    for instance, series in instances:
        seen = by_instance.get(instance.id) or by_sop.get(instance.sop_instance_uid)
        images.append(
            ImageOut(
                sop_instance_uid=instance.sop_instance_uid,
                series_instance_uid=series.series_instance_uid,
                series_number=series.series_number,
                series_description=series.series_description,
                modality=instance.modality,
                view_position=instance.view_position,
                image_laterality=instance.image_laterality,
                rows=instance.rows,
                columns=instance.columns,
                evaluated=seen.evaluated if seen is not None else None,
                probability=seen.probability if seen is not None else None,
                reason=(
                    seen.reason
                    if seen is not None
                    else ("received after the latest triage" if result is not None else None)
                ),
            )
        )

    result_out = None
    if result is not None:
        arrival = as_utc(study.first_received_at)
        finished = as_utc(result.finished_at)
        started = as_utc(result.started_at)
        result_out = ResultOut(
            revision=result.revision,
            status=result.status,
            reason=result.reason,
            decision=result.decision,
            probability=result.probability,
            score=result.score,
            priority=result.priority,
            priority_reason=result.priority_reason,
            model=ModelSummary(
                name=result.model_name,
                version=result.model_version,
                sha256=result.model_sha256,
                manufacturer=result.model_manufacturer,
                operating_point=result.operating_point,
                threshold=result.threshold,
                aggregation=result.aggregation,
                providers=result.providers,
            ),
            queued_at=as_utc(result.queued_at) if result.queued_at else None,
            started_at=started,
            finished_at=finished,
            seconds_from_arrival=(finished - arrival).total_seconds(),
            inference_seconds=(finished - started).total_seconds(),
            sr_sop_instance_uid=result.sr_sop_instance_uid,
            delivery_state=_delivery_state(result.deliveries),
            deliveries=[
                DeliveryOut(
                    destination=d.destination,
                    kind=d.kind,
                    state=d.state,
                    attempts=d.attempts,
                    last_error=d.last_error,
                    delivered_at=as_utc(d.delivered_at) if d.delivered_at else None,
                    next_attempt_at=as_utc(d.next_attempt_at) if d.next_attempt_at else None,
                )
                for d in result.deliveries
            ],
        )
    feedback = [
        FeedbackOut(
            username=f.user.username,
            label=f.label,
            agree=f.agree,
            ai_decision=f.ai_decision,
            revision=f.revision,
            comment=f.comment,
            created_at=as_utc(f.created_at),
            updated_at=as_utc(f.updated_at),
        )
        for f in session.scalars(
            select(Feedback).where(Feedback.study_id == study.id).order_by(Feedback.id)
        )
    ]
    return StudyDetail(
        row=row,
        patient_birth_date=study.patient_birth_date,
        referring_physician=study.referring_physician,
        requested_priority=study.requested_priority,
        images=images,
        result=result_out,
        feedback=feedback,
        viewer_url=viewer_url(viewer_url_template, study),
    )
