"""The worklist: studies in reading order, with filters."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from worklist import queries
from worklist.audit import Action
from worklist.core.clock import utcnow
from worklist.http.deps import AnyUser, SessionDep, SettingsDep, audited, wait_cap
from worklist.priority import priority_level
from worklist.views import WorklistFilters, WorklistRow

router = APIRouter(tags=["worklist"])


def worklist_filters(
    state: Annotated[list[str] | None, Query(description="Study states")] = None,
    read_state: Annotated[
        list[str] | None,
        Query(description="unread, claimed, completed (default unread and claimed)"),
    ] = None,
    priority: Annotated[
        list[str] | None, Query(description="Levels (0-60) or names (STAT, ABNORMAL...)")
    ] = None,
    date_from: Annotated[date | None, Query(description="Study date from")] = None,
    date_to: Annotated[date | None, Query(description="Study date to")] = None,
    modality: Annotated[list[str] | None, Query(description="Series modality")] = None,
    days: Annotated[
        int,
        Query(
            ge=0,
            le=3650,
            description="Only studies received in the last N days (0: no limit); "
            "ignored when a date filter is given",
        ),
    ] = 14,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorklistFilters:
    """The worklist's query parameters as :class:`WorklistFilters` (422 when a priority
    is neither a level nor a name)."""
    try:
        levels = [priority_level(p) for p in priority or []]
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    no_dates = date_from is None and date_to is None
    return WorklistFilters(
        state=state or [],
        read_state=read_state or [],
        priority=levels,
        date_from=date_from,
        date_to=date_to,
        modality=modality or [],
        received_within_days=(days or None) if no_dates else None,
        limit=limit,
        offset=offset,
    )


@router.get("/api/worklist", response_model=list[WorklistRow])
def worklist(
    principal: AnyUser,
    filters: Annotated[WorklistFilters, Depends(worklist_filters)],
    db: SessionDep,
    settings: SettingsDep,
) -> list[WorklistRow]:
    """The worklist, sorted by priority (smaller first), then waiting time (longest
    first). A study that waited past the wait cap is moved up to OVERDUE."""
    rows = queries.list_worklist(db, filters=filters, now=utcnow(), wait_cap=wait_cap(settings))
    used = filters.model_dump(mode="json", exclude_defaults=True)
    audited(db, principal, Action.VIEW_WORKLIST, detail={"filters": used, "rows": len(rows)})
    return rows
