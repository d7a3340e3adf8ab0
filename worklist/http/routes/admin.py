"""What only admins see: the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from worklist import audit
from worklist.audit import Action
from worklist.http.deps import Admin, SessionDep, audited

router = APIRouter(tags=["admin"])


@router.get("/api/audit")
def audit_log(
    principal: Admin,
    db: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    before_id: int | None = None,
    username: str | None = None,
    action: str | None = None,
    study_uid: str | None = None,
) -> list[dict[str, Any]]:
    """The audit log, newest first (admins)."""
    events = audit.list_events(
        db,
        limit=limit,
        before_id=before_id,
        username=username,
        action=action,
        study_instance_uid=study_uid,
    )
    audited(db, principal, Action.VIEW_AUDIT)
    return events
