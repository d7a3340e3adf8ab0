"""Reading a study: claim, release, complete, and the radiologist's feedback.

The write side is :mod:`worklist.reading`; here its errors become HTTP statuses (409
a conflict, 422 invalid feedback) and every attempt is audited, a refused one too.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy.orm import Session

from worklist import reading
from worklist.audit import Action, Outcome
from worklist.auth import Principal
from worklist.core.settings import Settings
from worklist.http.deps import PathStudy, Reader, SessionDep, SettingsDep, audited, study_detail
from worklist.http.schemas import FeedbackIn, FeedbackSaved, ReadStateOut
from worklist.tables import Role, Study

router = APIRouter(tags=["reading"])


@router.post("/api/studies/{study_uid}/claim", response_model=ReadStateOut)
def claim(
    principal: Reader,
    found: PathStudy,
    db: SessionDep,
    settings: SettingsDep,
    force: bool = False,
) -> ReadStateOut:
    """Claim the study for reading (409 when someone else holds it)."""
    return act(db, principal, found, settings, Action.CLAIM, force)


@router.post("/api/studies/{study_uid}/release", response_model=ReadStateOut)
def release(
    principal: Reader,
    found: PathStudy,
    db: SessionDep,
    settings: SettingsDep,
    force: bool = False,
) -> ReadStateOut:
    """Give the study back to the worklist."""
    return act(db, principal, found, settings, Action.RELEASE, force)


@router.post("/api/studies/{study_uid}/complete", response_model=ReadStateOut)
def complete(
    principal: Reader, found: PathStudy, db: SessionDep, settings: SettingsDep
) -> ReadStateOut:
    """Mark the study read (claims it first when unclaimed)."""
    return act(db, principal, found, settings, Action.COMPLETE, False)


@router.post("/api/studies/{study_uid}/feedback", response_model=FeedbackSaved, status_code=201)
def feedback(
    principal: Reader, found: PathStudy, body: FeedbackIn, db: SessionDep
) -> FeedbackSaved:
    """Record the radiologist's own Normal/Abnormal label (and agree/disagree) for
    the study's latest result; sending again replaces one's earlier feedback."""
    try:
        row = reading.give_feedback(
            db,
            study=found,
            user=principal.user,
            label=body.label,
            agree=body.agree,
            comment=body.comment,
        )
    except reading.InvalidFeedback as exc:
        db.rollback()
        raise HTTPException(status_code=422, detail=str(exc)) from None
    detail = {"label": row.label, "agree": row.agree, "revision": row.revision}
    audited(db, principal, Action.FEEDBACK, study=found, detail=detail)
    return FeedbackSaved(
        study_instance_uid=found.study_instance_uid,
        label=row.label,
        agree=row.agree,
        ai_decision=row.ai_decision,
        revision=row.revision,
    )


def act(
    db: Session,
    principal: Principal,
    study: Study,
    settings: Settings,
    action: Action,
    force: bool,
) -> ReadStateOut:
    """Claim, release or complete ``study`` for the caller, audited; its state after.

    Raises
    ------
    HTTPException
        403 when a non-admin forces, 409 when the reading state does not allow it.
    """
    if force and principal.role != Role.ADMIN.value:
        raise HTTPException(status_code=403, detail="only admins may force")
    try:
        if action == Action.CLAIM:
            reading.claim_study(db, study=study, user=principal.user, force=force)
        elif action == Action.RELEASE:
            reading.release_study(db, study=study, user=principal.user, force=force)
        else:
            reading.complete_study(db, study=study, user=principal.user)
    except reading.ReadingConflict as exc:
        db.rollback()
        why = {"why": str(exc)}
        audited(db, principal, action, study=study, outcome=Outcome.DENIED, detail=why)
        raise HTTPException(status_code=409, detail=str(exc)) from None
    audited(db, principal, action, study=study, detail={"force": True} if force else None)
    row = study_detail(db, study, settings).row
    return ReadStateOut(
        study_instance_uid=study.study_instance_uid,
        read_state=row.read_state,
        claimed_by=row.claimed_by,
    )
