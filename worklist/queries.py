"""Read side of the worklist: plain functions over a session, typed results.

The worklist is the studies with their latest triage result and their reading state,
sorted by effective priority then by waiting time (oldest first). The effective
priority mirrors :func:`triage.priority.worklist_sort_key` (the worklist does not
import ``triage``): a study that waited longer than the wait cap is moved up to
``OVERDUE`` (10), above every AI level; only ``STAT`` (0) stays above it. A study
without a result yet is ``PENDING`` at the hospital's requested level, or 40.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from worklist.accounts import Feedback, ReadState, StudyRead, User
from worklist.ingest import as_utc
from worklist.tables import (
    Delivery,
    Instance,
    Series,
    Study,
    StudyState,
    TriageImage,
    TriageResult,
)

__all__ = [
    "AGE_BANDS",
    "PRIORITY_LEVELS",
    "StudyDetail",
    "WorklistFilters",
    "WorklistRow",
    "age_band",
    "agreement_report",
    "effective_priority",
    "get_study",
    "latest_result",
    "list_worklist",
    "probability_distribution",
    "study_detail",
    "viewer_url",
]

#: Priority levels (smaller is more urgent): value -> (name, label, colour).
PRIORITY_LEVELS: dict[int, tuple[str, str, str]] = {
    0: ("STAT", "STAT", "red"),
    10: ("OVERDUE", "Overdue", "purple"),
    20: ("ABNORMAL_HIGH", "Abnormal (high)", "red"),
    30: ("ABNORMAL", "Abnormal", "orange"),
    40: ("NOT_EVALUATED", "Not evaluated", "grey"),
    50: ("NORMAL", "Normal", "green"),
    60: ("LOW", "Low", "green"),
}
_NAME_TO_LEVEL = {name: level for level, (name, _l, _c) in PRIORITY_LEVELS.items()}
_HOSPITAL = {"STAT": 0, "HIGH": 30, "MEDIUM": 50, "ROUTINE": 50, "LOW": 60}
PENDING_LEVEL = 40
OVERDUE_LEVEL = 10

#: Age bands of the subgroup monitoring (years, lower bound inclusive).
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("0-17", 0, 18),
    ("18-39", 18, 40),
    ("40-59", 40, 60),
    ("60-79", 60, 80),
    ("80+", 80, 1000),
)


# Schemas -----------------------------------------------------------------------------


class WorklistFilters(BaseModel):
    """Filters of :func:`list_worklist` (all optional; lists are OR-ed)."""

    state: list[str] = Field(default_factory=list, description="Study states.")
    read_state: list[str] = Field(
        default_factory=list,
        description="unread, claimed, completed; default unread and claimed.",
    )
    priority: list[int] = Field(default_factory=list, description="Effective levels.")
    date_from: date | None = Field(None, description="Study date on or after.")
    date_to: date | None = Field(None, description="Study date on or before.")
    modality: list[str] = Field(default_factory=list, description="Series modality.")
    received_within_days: int | None = Field(
        None, ge=1, description="Only studies whose first instance arrived in the last N days."
    )
    limit: int = Field(200, ge=1, le=1000)
    offset: int = Field(0, ge=0)


STATE_REASONS: dict[str, str] = {
    StudyState.PATIENT_MISMATCH: (
        "Held, not triaged: an instance with another Patient ID arrived in this study. "
        "An administrator checks it, then runs `triage-node study release UID`."
    ),
}
"""Shown with the study's state where it needs an administrator."""


class WorklistRow(BaseModel):
    """One study on the worklist."""

    study_instance_uid: str
    accession_number: str | None
    patient_name: str | None
    patient_id: str | None
    patient_sex: str | None
    patient_age: str | None
    study_date: str | None
    study_description: str | None
    modalities: list[str]
    state: str
    state_reason: str | None = Field(
        None, description="Why the study is in its state, when it needs an administrator."
    )
    read_state: str
    claimed_by: str | None
    priority: int = Field(description="Effective priority (smaller is read first).")
    stored_priority: int | None = Field(description="Priority stored with the result.")
    priority_name: str
    priority_label: str
    priority_colour: str
    priority_reason: str | None
    decision: str | None
    probability: float | None
    received_at: datetime
    waiting_seconds: float
    triaged_at: datetime | None
    instance_count: int
    revision: int


class ImageOut(BaseModel):
    """An instance of a study and what the latest triage did with it."""

    sop_instance_uid: str
    series_instance_uid: str
    series_number: str | None
    series_description: str | None
    modality: str | None
    view_position: str | None
    image_laterality: str | None
    rows: int | None
    columns: int | None
    evaluated: bool | None = Field(description="None: no triage result covers it yet.")
    probability: float | None
    reason: str | None = Field(description="Why the image was skipped (selection rule).")


class DeliveryOut(BaseModel):
    """SR delivery to one destination."""

    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class ModelSummary(BaseModel):
    """The model that produced a result (provenance)."""

    name: str
    version: str
    sha256: str
    manufacturer: str | None
    operating_point: str
    threshold: float | None
    aggregation: str
    providers: str | None


class ResultOut(BaseModel):
    """A study's latest triage result."""

    revision: int
    status: str
    reason: str | None
    decision: str | None
    probability: float | None
    score: float | None
    priority: int
    priority_reason: str
    model: ModelSummary
    queued_at: datetime | None
    started_at: datetime
    finished_at: datetime
    seconds_from_arrival: float | None
    inference_seconds: float
    sr_sop_instance_uid: str | None
    delivery_state: str = Field(description="none, pending, delivered, failed, partial.")
    deliveries: list[DeliveryOut]


class FeedbackOut(BaseModel):
    """One radiologist's feedback on a study."""

    username: str
    label: str
    agree: bool | None
    ai_decision: str | None
    revision: int
    comment: str | None
    created_at: datetime
    updated_at: datetime


class StudyDetail(BaseModel):
    """A study with its images, result, deliveries, reading state and feedback."""

    row: WorklistRow
    patient_birth_date: str | None
    referring_physician: str | None
    requested_priority: str | None
    images: list[ImageOut]
    result: ResultOut | None
    feedback: list[FeedbackOut]
    viewer_url: str | None


# Helpers -----------------------------------------------------------------------------


def format_person_name(value: str | None) -> str | None:
    """Render a DICOM PN value (``FAMILY^GIVEN^MIDDLE``) as ``FAMILY, GIVEN MIDDLE``."""
    if not value:
        return None
    alphabetic = value.split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family, given = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {given}" if family and given else (family or given or None)


def priority_level(value: int | str) -> int:
    """Parse a priority given as a level number or a name (``ABNORMAL``).

    Raises
    ------
    ValueError
        When neither.
    """
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.lstrip("-").isdigit():
        return int(text)
    if text in _NAME_TO_LEVEL:
        return _NAME_TO_LEVEL[text]
    raise ValueError(f"unknown priority {value!r}")


def effective_priority(
    stored: int | None,
    requested_priority: str | None,
    received_at: datetime,
    *,
    now: datetime,
    wait_cap: timedelta,
) -> int:
    """The priority a study is sorted by now.

    Parameters
    ----------
    stored : int or None
        The priority stored with its latest result (None: not triaged yet).
    requested_priority : str or None
        The hospital's requested priority (used while there is no result).
    received_at : datetime
        When the study arrived.
    now : datetime
    wait_cap : timedelta

    Returns
    -------
    int
    """
    if stored is None:
        level = _HOSPITAL.get((requested_priority or "").strip().upper(), PENDING_LEVEL)
    else:
        level = int(stored)
    if now - received_at > wait_cap:
        level = min(level, OVERDUE_LEVEL)
    return level


def _level_info(level: int, has_result: bool) -> tuple[str, str, str]:
    if not has_result and level == PENDING_LEVEL:
        return ("PENDING", "Pending AI", "blue")
    if level in PRIORITY_LEVELS:
        return PRIORITY_LEVELS[level]
    nearest = min(PRIORITY_LEVELS, key=lambda k: abs(k - level))
    return PRIORITY_LEVELS[nearest]


def age_years(patient_age: str | None) -> float | None:
    """Age in years from a DICOM AS value (``045Y``, ``006M``, ``003W``, ``010D``)."""
    if not patient_age:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", patient_age.upper())
    if not match:
        return None
    n, unit = int(match[1]), match[2] or "Y"
    return {"Y": n, "M": n / 12, "W": n / 52.18, "D": n / 365.25}[unit]


def age_band(patient_age: str | None) -> str:
    """The monitoring age band of a DICOM AS value, or ``unknown``.

    Parameters
    ----------
    patient_age : str or None

    Returns
    -------
    str
        One of :data:`AGE_BANDS` names, or ``unknown``.
    """
    years = age_years(patient_age)
    if years is None:
        return "unknown"
    for name, lo, hi in AGE_BANDS:
        if lo <= years < hi:
            return name
    return "unknown"


def sex_group(patient_sex: str | None) -> str:
    """``F``, ``M``, ``O`` or ``unknown`` from a DICOM Patient's Sex value."""
    value = (patient_sex or "").strip().upper()
    return value if value in ("F", "M", "O") else "unknown"


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


def _latest_results_subquery() -> Any:
    latest = (
        select(TriageResult.study_id, func.max(TriageResult.revision).label("revision"))
        .group_by(TriageResult.study_id)
        .subquery()
    )
    return latest


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
    level = effective_priority(
        result.priority if result is not None else None,
        study.requested_priority,
        received,
        now=now,
        wait_cap=wait_cap,
    )
    name, label, colour = _level_info(level, result is not None)
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
            ("waited longer than the cap; " if level == OVERDUE_LEVEL else "")
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


def list_worklist(
    session: Session,
    *,
    filters: WorklistFilters,
    now: datetime,
    wait_cap: timedelta,
) -> list[WorklistRow]:
    """The worklist: filtered, sorted by effective priority then waiting time.

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
        At most ``filters.limit`` rows from ``filters.offset`` on.
    """
    latest = _latest_results_subquery()
    query = (
        select(Study, TriageResult, StudyRead, User.username)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(
            TriageResult,
            and_(
                TriageResult.study_id == Study.id,
                TriageResult.revision == latest.c.revision,
            ),
        )
        .outerjoin(StudyRead, StudyRead.study_id == Study.id)
        .outerjoin(User, User.id == StudyRead.user_id)
    )
    if filters.state:
        query = query.where(Study.state.in_(filters.state))
    read_states = filters.read_state or [ReadState.UNREAD.value, ReadState.CLAIMED.value]
    conditions = []
    if ReadState.UNREAD.value in read_states:
        conditions.append(StudyRead.id.is_(None))
    others = [s for s in read_states if s != ReadState.UNREAD.value]
    if others:
        conditions.append(StudyRead.state.in_(others))
    query = query.where(or_(*conditions)) if conditions else query.where(False)
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
    records = session.execute(query).all()
    modalities = _modalities(session, [r[0].id for r in records])
    rows = [
        _row(
            study,
            result,
            read,
            claimer,
            modalities.get(study.id, []),
            now=now,
            wait_cap=wait_cap,
        )
        for study, result, read, claimer in records
    ]
    if filters.priority:
        rows = [r for r in rows if r.priority in set(filters.priority)]
    rows.sort(key=lambda r: (r.priority, r.received_at, r.study_instance_uid))
    return rows[filters.offset : filters.offset + filters.limit]


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


# Monitoring --------------------------------------------------------------------------


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _confusion(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    tp = fp = tn = fn = 0
    for ai, label in pairs:
        if label == "abnormal":
            tp += ai == "abnormal"
            fn += ai != "abnormal"
        else:
            fp += ai == "abnormal"
            tn += ai != "abnormal"
    n = tp + fp + tn + fn

    def ratio(k: int, m: int) -> dict[str, Any]:
        return {
            "value": (k / m) if m else None,
            "ci95": _wilson(k, m),
            "k": k,
            "n": m,
        }

    return {
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "agreement": ratio(tp + tn, n),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
    }


def agreement_report(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Agreement, sensitivity and specificity of the AI against radiologists' labels.

    The reference is each radiologist's own Normal/Abnormal label; the AI is positive
    when its decision was ``abnormal``. Feedback on studies the AI did not decide
    (not evaluated, failed) is counted separately. Proportions come with Wilson 95 %
    intervals. Groups: overall, by sex, by age band, by model (name and version, so
    that a model update shows).

    Parameters
    ----------
    session : Session
    since, until : datetime, optional
        Feedback time window.
    model_version : str, optional
        Only feedback on results of this model version.

    Returns
    -------
    dict
        ``overall``, ``by_sex``, ``by_age_band``, ``by_model``, ``undecided`` (count).
    """
    query = select(
        Feedback.ai_decision,
        Feedback.label,
        Feedback.patient_sex,
        Feedback.age_band,
        Feedback.model_name,
        Feedback.model_version,
    )
    if model_version is not None:
        query = query.where(Feedback.model_version == model_version)
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    if until is not None:
        query = query.where(Feedback.created_at < until)
    rows = session.execute(query).all()
    decided = [r for r in rows if r.ai_decision in ("normal", "abnormal")]
    by_sex: dict[str, list[tuple[str, str]]] = defaultdict(list)
    by_age: dict[str, list[tuple[str, str]]] = defaultdict(list)
    by_model: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in decided:
        by_sex[sex_group(r.patient_sex)].append((r.ai_decision, r.label))
        by_age[r.age_band or "unknown"].append((r.ai_decision, r.label))
        by_model[f"{r.model_name} {r.model_version}"].append((r.ai_decision, r.label))
    age_order = [name for name, _lo, _hi in AGE_BANDS] + ["unknown"]
    return {
        "overall": _confusion((r.ai_decision, r.label) for r in decided),
        "by_sex": {k: _confusion(by_sex[k]) for k in sorted(by_sex)},
        "by_age_band": {k: _confusion(by_age[k]) for k in age_order if k in by_age},
        "by_model": {k: _confusion(by_model[k]) for k in sorted(by_model)},
        "undecided": len(rows) - len(decided),
    }


def probability_distribution(
    session: Session, *, days: int, now: datetime, bins: int = 10
) -> list[dict[str, Any]]:
    """Daily distribution of the study probabilities of the triage results (drift).

    Parameters
    ----------
    session : Session
    days : int
        How many days back from ``now`` (UTC days, today included).
    now : datetime
    bins : int
        Equal-width bins over [0, 1].

    Returns
    -------
    list of dict
        One per day with results: ``day``, ``n``, ``mean``, ``median``, ``p90``,
        ``abnormal_rate``, ``histogram`` (counts per bin) and ``bin_edges``.
    """
    start = datetime.combine((now - timedelta(days=days - 1)).date(), time.min, tzinfo=UTC)
    query = select(TriageResult.finished_at, TriageResult.probability, TriageResult.decision).where(
        TriageResult.finished_at >= start, TriageResult.probability.is_not(None)
    )
    per_day: dict[date, list[tuple[float, str | None]]] = defaultdict(list)
    for finished, probability, decision in session.execute(query):
        per_day[as_utc(finished).date()].append((float(probability), decision))
    edges = [i / bins for i in range(bins + 1)]
    out = []
    for day in sorted(per_day):
        values = sorted(p for p, _d in per_day[day])
        n = len(values)
        hist = [0] * bins
        for p in values:
            hist[min(bins - 1, max(0, int(p * bins)))] += 1
        out.append(
            {
                "day": day.isoformat(),
                "n": n,
                "mean": sum(values) / n,
                "median": _quantile(values, 0.5),
                "p90": _quantile(values, 0.9),
                "abnormal_rate": sum(d == "abnormal" for _p, d in per_day[day]) / n,
                "histogram": hist,
                "bin_edges": edges,
            }
        )
    return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
