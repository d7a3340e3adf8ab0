"""Re-triage a study after a model change: a new revision through the normal hand-off.

:func:`request_retriage` moves a finished study back to ``queued`` with the next
revision, in one conditional UPDATE, and audits it. The stability watcher then hands
that revision to the workers exactly as for a study that just became stable
(:func:`worklist.stability.dispatch_queued`); the worker's new SR supersedes the
earlier one, and the worklist shows the new result. A study that is still receiving,
queued or being triaged is left alone: it gets a triage of its newest revision anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worklist import audit
from worklist.tables import Study, StudyState

__all__ = ["RETRIAGE_ACTION", "RetriageError", "Retriaged", "request_retriage"]

#: ``AuditEvent.action`` of a re-triage request.
RETRIAGE_ACTION = audit.Action.RETRIAGE

_FINISHED = (StudyState.TRIAGED, StudyState.NOT_EVALUATED, StudyState.FAILED)


class RetriageError(ValueError):
    """The study is unknown, or not in a state that can be re-triaged now."""


@dataclass(frozen=True)
class Retriaged:
    """A study queued again.

    Attributes
    ----------
    study_id : int
    study_instance_uid : str
    previous_revision, revision : int
    """

    study_id: int
    study_instance_uid: str
    previous_revision: int
    revision: int


def request_retriage(
    session: Session, *, study_instance_uid: str, actor: audit.Actor, reason: str | None = None
) -> Retriaged:
    """Queue a finished study for a new triage revision (audited; the caller commits).

    Parameters
    ----------
    session : Session
    study_instance_uid : str
    actor : audit.Actor
        Who asks (the CLI's operator).
    reason : str, optional
        Why, for the audit log (e.g. ``model 0.2.0``); no patient data.

    Returns
    -------
    Retriaged

    Raises
    ------
    RetriageError
        Unknown study, or one still receiving, queued or being triaged.
    """
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        raise RetriageError(f"no study {study_instance_uid}")
    previous = study.revision
    moved = session.execute(
        update(Study)
        .where(
            Study.id == study.id,
            Study.revision == previous,
            Study.state.in_([s.value for s in _FINISHED]),
        )
        .values(state=StudyState.QUEUED, revision=Study.revision + 1, dispatched_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.expire(study)  # the UPDATE ran in SQL; reload on next access
    if moved != 1:
        raise RetriageError(
            f"study {study_instance_uid} is {study.state} (revision {study.revision}):"
            " its newest revision is triaged anyway"
        )
    audit.record(
        session,
        actor=actor,
        action=RETRIAGE_ACTION,
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        detail={"from_revision": previous, "to_revision": previous + 1, "reason": reason},
    )
    return Retriaged(study.id, study.study_instance_uid, previous, previous + 1)
