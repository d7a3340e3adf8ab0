"""The web page for radiologists: the worklist, a study, the monitoring figures.

The worklist page fills itself from ``GET /api/worklist`` (``static/app.js``); the
other pages are rendered here. Without a session they redirect to ``/login``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import object_session

from worklist import monitoring, queries
from worklist.audit import Action
from worklist.auth import Principal
from worklist.core.clock import utcnow
from worklist.http.deps import (
    READERS,
    PageReader,
    PageUser,
    PathStudy,
    SessionDep,
    SettingsDep,
    TemplatesDep,
    audited,
    study_detail,
    wait_cap,
)
from worklist.http.routes.models import champion_vs_challengers
from worklist.http.templating import heatmap_context, population_context
from worklist.outbox import failed_delivery_alert
from worklist.time_to_read import time_to_read_report

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def worklist_page(request: Request, principal: PageUser, templates: TemplatesDep) -> Response:
    """The worklist."""
    return templates.TemplateResponse(request, "worklist.html", page_context(request, principal))


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(
    request: Request,
    principal: PageUser,
    found: PathStudy,
    db: SessionDep,
    settings: SettingsDep,
    templates: TemplatesDep,
) -> Response:
    """A study: images, result, deliveries, reading actions and one's own feedback."""
    detail = study_detail(db, found, settings)
    audited(db, principal, Action.VIEW_STUDY, study=found, detail={"page": True})
    name = principal.user.username
    mine = next((f for f in reversed(detail.feedback) if f.username == name), None)
    context = page_context(
        request,
        principal,
        d=detail,
        r=detail.row,
        mine=mine,
        can_read=principal.role in {r.value for r in READERS},
        has_viewer=bool(detail.viewer_url),
        **population_context(request.app.state.model_card.get()[0], detail.row.patient_age),
        **heatmap_context(settings, detail),
    )
    return templates.TemplateResponse(request, "study.html", context)


@router.get("/studies/{study_uid}/viewer")
def open_viewer(
    principal: PageUser, found: PathStudy, db: SessionDep, settings: SettingsDep
) -> Response:
    """To the hospital viewer (404 when none is configured)."""
    url = queries.viewer_url(settings.viewer_url_template, found)
    if not url:
        raise HTTPException(status_code=404, detail="no viewer configured")
    audited(db, principal, Action.OPEN_VIEWER, study=found)
    return RedirectResponse(url, status_code=303)


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring_page(
    request: Request,
    principal: PageReader,
    db: SessionDep,
    templates: TemplatesDep,
    settings: SettingsDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> Response:
    """Agreement with the radiologists by group, the daily probabilities, and the time
    to read (turnaround by level and label, longest wait, over the cap, daily trend)."""
    report = monitoring.agreement_report(db)
    daily = monitoring.probability_distribution(db, days=days, now=utcnow())
    reading = time_to_read_report(db, now=utcnow(), wait_cap=wait_cap(settings), days=days)
    audited(db, principal, Action.VIEW_MONITORING)
    context = page_context(
        request,
        principal,
        groups=agreement_groups(report),
        undecided=report["undecided"],
        daily=daily,
        days=days,
        comparison=champion_vs_challengers(db, request.app.state.settings, n_boot=200),
        reading=reading,
    )
    return templates.TemplateResponse(request, "monitoring.html", context)


def page_context(request: Request, principal: Principal, **extra: Any) -> dict[str, Any]:
    """What every page shows: the user, the session's CSRF token for its forms, and
    the banner of SR deliveries that failed (read in the request's own session)."""
    authenticator = request.app.state.authenticator
    return {
        "user": principal.user,
        "csrf_token": authenticator.csrf_token(principal.session_token or ""),
        "delivery_alert": failed_delivery_alert(object_session(principal.user)),
        **extra,
    }


def agreement_groups(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The rows of the monitoring page's table: (grouping, group, figures)."""
    groups = [("Overall", "all", report["overall"])]
    groups += [("Sex", k, v) for k, v in report["by_sex"].items()]
    groups += [("Age band", k, v) for k, v in report["by_age_band"].items()]
    groups += [("Model", k, v) for k, v in report["by_model"].items()]
    return groups
