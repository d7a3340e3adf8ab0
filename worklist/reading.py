"""Write side of the worklist: claim, release, complete a study; record feedback.

Plain functions over a session (flush, no commit); the API maps their errors to HTTP
statuses and writes the audit rows in the same transaction.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worklist.core.clock import utcnow
from worklist.dicom_values import patient_age_band
from worklist.queries import latest_result
from worklist.tables import Feedback, ReadState, Study, StudyRead, User

__all__ = [
    "LABELS",
    "InvalidFeedback",
    "ReadingConflict",
    "ReadingError",
    "claim_study",
    "complete_study",
    "give_feedback",
    "release_study",
]

#: The labels a radiologist gives.
LABELS = ("normal", "abnormal")


class ReadingError(Exception):
    """Root of the errors of this module."""


class ReadingConflict(ReadingError):
    """The study's reading state does not allow the action (HTTP 409)."""


class InvalidFeedback(ReadingError):
    """The feedback is inconsistent (HTTP 422)."""


def _read(session: Session, study: Study) -> StudyRead | None:
    return session.scalar(select(StudyRead).where(StudyRead.study_id == study.id))


def claim_study(session: Session, *, study: Study, user: User, force: bool = False) -> StudyRead:
    """Claim a study for reading.

    Claiming a study one already holds is a no-op.

    Parameters
    ----------
    session : Session
    study : Study
    user : User
    force : bool
        Take it over from another reader (admins).

    Returns
    -------
    StudyRead

    Raises
    ------
    ReadingConflict
        When another user holds it or it is completed (and not ``force``).
    """
    read = _read(session, study)
    now = utcnow()
    if read is None:
        read = StudyRead(
            study_id=study.id,
            state=ReadState.CLAIMED.value,
            user_id=user.id,
            claimed_at=now,
            revision=study.revision,
        )
        try:
            with session.begin_nested():
                session.add(read)
        except IntegrityError:
            # Someone claimed it at the same moment (unique study_id): they won.
            raise ReadingConflict("the study was claimed by someone else just now") from None
    elif read.state == ReadState.COMPLETED.value and not force:
        raise ReadingConflict("the study is already reported")
    elif read.user_id != user.id and not force:
        raise ReadingConflict(f"the study is claimed by {read.user.username}")
    elif read.user_id != user.id or read.state != ReadState.CLAIMED.value:
        read.user_id = user.id
        read.state = ReadState.CLAIMED.value
        read.claimed_at = now
        read.completed_at = None
        read.revision = study.revision
    study.read_state = read.state
    session.flush()
    return read


def release_study(session: Session, *, study: Study, user: User, force: bool = False) -> None:
    """Give a claimed study back to the worklist (unread).

    Parameters
    ----------
    session : Session
    study : Study
    user : User
    force : bool
        Release another reader's claim (admins).

    Raises
    ------
    ReadingConflict
        When the study is not claimed, is completed, or is held by someone else.
    """
    read = _read(session, study)
    if read is None:
        raise ReadingConflict("the study is not claimed")
    if read.state == ReadState.COMPLETED.value and not force:
        raise ReadingConflict("the study is already reported")
    if read.user_id != user.id and not force:
        raise ReadingConflict(f"the study is claimed by {read.user.username}")
    session.delete(read)
    study.read_state = ReadState.UNREAD.value
    session.flush()


def complete_study(session: Session, *, study: Study, user: User) -> StudyRead:
    """Mark a study as read (it leaves the default worklist).

    An unclaimed study is claimed and completed at once.

    Parameters
    ----------
    session : Session
    study : Study
    user : User

    Returns
    -------
    StudyRead

    Raises
    ------
    ReadingConflict
        When another user holds it, or it is already completed.
    """
    read = claim_study(session, study=study, user=user)
    read.state = ReadState.COMPLETED.value
    read.completed_at = utcnow()
    read.revision = study.revision
    study.read_state = read.state
    session.flush()
    return read


def give_feedback(
    session: Session,
    *,
    study: Study,
    user: User,
    label: str,
    agree: bool | None = None,
    comment: str | None = None,
) -> Feedback:
    """Record a radiologist's own label for a study's latest result.

    ``agree`` is derived from the label and the AI decision; when the caller also
    sends it, it must match. One row per user and revision: giving feedback again
    replaces it.

    Parameters
    ----------
    session : Session
    study : Study
    user : User
    label : str
        ``normal`` or ``abnormal``.
    agree : bool, optional
        The reader's "agree / disagree" with the AI, checked against ``label``.
    comment : str, optional
        Free text (max 1024 characters).

    Returns
    -------
    Feedback

    Raises
    ------
    InvalidFeedback
        When the label is unknown, or ``agree`` contradicts label and AI decision.
    """
    label = (label or "").strip().lower()
    if label not in LABELS:
        raise InvalidFeedback("label must be 'normal' or 'abnormal'")
    result = latest_result(session, study_id=study.id)
    decision = result.decision if result is not None else None
    derived = (label == decision) if decision in LABELS else None
    if agree is not None and derived is not None and agree != derived:
        raise InvalidFeedback(
            f"'agree={agree}' contradicts label {label!r} and the AI decision {decision!r}"
        )
    revision = result.revision if result is not None else study.revision
    now = utcnow()
    row = session.scalar(
        select(Feedback).where(
            Feedback.study_id == study.id,
            Feedback.revision == revision,
            Feedback.user_id == user.id,
        )
    )
    if row is None:
        row = Feedback(study_id=study.id, revision=revision, user_id=user.id, created_at=now)
        try:
            with session.begin_nested():
                session.add(row)
                row.label = label  # the row must be complete to be flushed
                row.updated_at = now
        except IntegrityError:
            # The same user's other request inserted it at the same moment: update that.
            row = session.scalar(
                select(Feedback).where(
                    Feedback.study_id == study.id,
                    Feedback.revision == revision,
                    Feedback.user_id == user.id,
                )
            )
            if row is None:  # pragma: no cover - would mean the database lost a row
                raise
    row.result_id = result.id if result is not None else None
    row.label = label
    row.agree = derived
    row.ai_decision = decision
    row.ai_probability = result.probability if result is not None else None
    row.model_name = result.model_name if result is not None else None
    row.model_version = result.model_version if result is not None else None
    row.patient_sex = study.patient_sex
    row.age_band = patient_age_band(study.patient_age)
    row.comment = (comment or "").strip()[:1024] or None
    row.updated_at = now
    session.flush()
    return row
