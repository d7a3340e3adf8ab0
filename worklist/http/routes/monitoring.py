"""The model in service: its card, and how it fares against the radiologists."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from worklist import monitoring
from worklist.audit import Action
from worklist.core.clock import utcnow
from worklist.http.deps import AnyUser, Reader, SessionDep, SettingsDep, audited, wait_cap
from worklist.time_to_read import time_to_read_report

router = APIRouter()


@router.get("/api/model-card", tags=["model"])
def model_card(request: Request, _principal: AnyUser, db: SessionDep) -> Any:
    """The card of the model that decides: the registry's champion, else the configured
    model (503 when unreadable)."""
    from worklist.model_registry import champion_card

    registered = champion_card(db)
    if registered is not None:
        return registered
    card, problem = request.app.state.model_card.get()
    if card is None:
        raise HTTPException(status_code=503, detail=f"model card unavailable: {problem}")
    return card


@router.get("/api/monitoring/agreement", tags=["monitoring"])
def monitoring_agreement(
    principal: Reader,
    db: SessionDep,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """AI agreement, sensitivity and specificity against the radiologists' labels,
    overall, by sex, by age band and by model (Wilson 95 % intervals)."""
    report = monitoring.agreement_report(db, since=since, until=until, model_version=model_version)
    audited(db, principal, Action.VIEW_MONITORING)
    return report


@router.get("/api/monitoring/probabilities", tags=["monitoring"])
def monitoring_probabilities(
    principal: Reader, db: SessionDep, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> list[dict[str, Any]]:
    """Daily distribution of the study probabilities (histogram, mean, median, p90,
    abnormal rate), so that drift shows."""
    out = monitoring.probability_distribution(db, days=days, now=utcnow())
    audited(db, principal, Action.VIEW_MONITORING)
    return out


@router.get("/api/monitoring/time-to-read", tags=["monitoring"])
def monitoring_time_to_read(
    principal: Reader,
    db: SessionDep,
    settings: SettingsDep,
    days: Annotated[int, Query(ge=1, le=366)] = 7,
) -> dict[str, Any]:
    """Turnaround (arrival -> completed read) by priority level and by the radiologists'
    label, the longest current wait, studies over the wait cap, and a daily trend
    (seconds; the definitions of the reading-order simulator)."""
    out = time_to_read_report(db, now=utcnow(), wait_cap=wait_cap(settings), days=days)
    audited(db, principal, Action.VIEW_MONITORING)
    return out
