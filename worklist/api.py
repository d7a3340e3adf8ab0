"""HTTP API and web page of the node (FastAPI).

The app is built by :func:`create_app` from the settings and a session factory;
nothing is created at import time.

Public (no user): ``/healthz``, ``/readyz``, ``/metrics``, the sign-in page and its
static files. Everything else needs a user: a session cookie (web page) or a bearer
token (systems). Each view of patient data and each action is audited
(:mod:`worklist.audit`).

JSON API, under ``/api/`` (OpenAPI at ``/api/openapi.json``):

=======================================  =============================================
``GET  /api/worklist``                   the worklist (filters, priority order)
``GET  /api/studies/{uid}``              a study: images, result, deliveries, feedback
``GET  /api/studies/{uid}/images/{sop}/thumbnail``  PNG preview
``POST /api/studies/{uid}/claim``        claim for reading (``?force=true``: admins)
``POST /api/studies/{uid}/release``      give back
``POST /api/studies/{uid}/complete``     mark read
``POST /api/studies/{uid}/feedback``     radiologist's label, agree/disagree
``GET  /api/model-card``                 the active model card
``GET  /api/monitoring/agreement``       agreement, sensitivity, specificity by group
``GET  /api/monitoring/probabilities``   daily probability distribution (drift)
``GET  /api/audit``                      the audit log (admins)
``GET  /api/me``                         the caller (and the session's CSRF token)
=======================================  =============================================
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from worklist import audit, queries, reading
from worklist.accounts import Role
from worklist.audit import Action, Outcome
from worklist.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Authenticator,
    LoginFailed,
    LoginRateLimited,
    ServiceAccountLogin,
    LoginRequired,
    Principal,
    client_ip,
    get_db,
    get_principal,
    require_roles,
    session_key,
)
from worklist.ingest import utcnow
from worklist.metrics import make_registry
from worklist.page_context import configure_templates, population_context
from worklist.settings import Settings
from worklist.tables import Instance, Study
from worklist.thumbnails import ThumbnailError, render_thumbnail

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
ALL_ROLES = (Role.RADIOLOGIST, Role.ADMIN, Role.SERVICE)
READERS = (Role.RADIOLOGIST, Role.ADMIN)
CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# Readiness ---------------------------------------------------------------------------


def check_database(session_factory: sessionmaker) -> str | None:
    """Return None when the database answers, else the error text.

    Parameters
    ----------
    session_factory : sessionmaker

    Returns
    -------
    str or None
    """
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"{type(exc).__name__}: {exc}"
    return None


def check_broker(url: str, timeout: float = 2.0) -> str | None:
    """Return None when the Celery broker accepts a connection, else the error text.

    Parameters
    ----------
    url : str
        Broker URL (``redis://...`` or the embedded ``sqla+sqlite:///...``).
    timeout : float
        Seconds.

    Returns
    -------
    str or None
    """
    try:
        from kombu import Connection

        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"{type(exc).__name__}: {exc}"
    return None


class ModelCardCache:
    """Loads the configured model's card once (through ONNX Runtime), retrying on failure.

    Loading the card opens the ONNX file in ONNX Runtime, so a card here means the
    model file loads. Failures are retried at most every ``retry_seconds``.

    Parameters
    ----------
    settings : Settings
    retry_seconds : float
    """

    def __init__(self, settings: Settings, retry_seconds: float = 10.0) -> None:
        self._settings = settings
        self._retry = retry_seconds
        self._lock = threading.Lock()
        self._card: dict[str, Any] | None = None
        self._error: str | None = None
        self._tried_at = 0.0

    def model_path(self) -> Path:
        """The configured model, or the shipped default."""
        from models.runtime import resolve_model_path

        return resolve_model_path(self._settings.model_path)

    def get(self) -> tuple[dict[str, Any] | None, str | None]:
        """Return ``(card, None)`` or ``(None, error text)``."""
        with self._lock:
            if self._card is not None:
                return self._card, None
            if self._error is not None and time.monotonic() - self._tried_at < self._retry:
                return None, self._error
            self._tried_at = time.monotonic()
            path = self.model_path()
            try:
                from models.card import read_card

                card = read_card(path)
            except Exception as exc:  # noqa: BLE001 - reported by /readyz
                self._error = f"{type(exc).__name__}: {exc}"
                log.warning("model card of %s not readable: %s", path, self._error)
                return None, self._error
            self._card = card.model_dump(mode="json")
            self._card["file"] = path.name
            self._error = None
            return self._card, None


# Request bodies ----------------------------------------------------------------------


class FeedbackIn(BaseModel):
    """A radiologist's feedback on a study's latest result."""

    label: Literal["normal", "abnormal"] = Field(description="The radiologist's own read.")
    agree: bool | None = Field(
        None, description="Agree with the AI decision; must match the label when given."
    )
    comment: str | None = Field(None, max_length=1024)


class ReadStateOut(BaseModel):
    """The reading state of a study after an action."""

    study_instance_uid: str
    read_state: str
    claimed_by: str | None


class FeedbackSaved(BaseModel):
    """Feedback as stored."""

    study_instance_uid: str
    label: str
    agree: bool | None
    ai_decision: str | None
    revision: int


class Me(BaseModel):
    """The caller."""

    username: str
    role: str
    auth_method: str
    csrf_token: str | None


# App ---------------------------------------------------------------------------------


def create_app(settings: Settings, session_factory: sessionmaker) -> FastAPI:
    """Build the HTTP application.

    Parameters
    ----------
    settings : Settings
        The node's settings.
    session_factory : sessionmaker
        Sessions on the node's database.

    Returns
    -------
    FastAPI
    """
    app = FastAPI(
        title="cxr-triage-node",
        version="0.1.0",
        description="Chest X-ray triage worklist API. Authenticate with a bearer token.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.authenticator = Authenticator(settings, session_key(settings))
    app.state.model_card = ModelCardCache(settings)
    app.state.registry = make_registry(session_factory)
    templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))
    templates.env.filters["dicom_date"] = _dicom_date
    configure_templates(templates.env, settings)
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")
    wait_cap = timedelta(minutes=settings.wait_cap_minutes)
    broker_cache: dict[str, Any] = {"at": 0.0, "problem": None}

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)

    def _study_or_404(db: Session, uid: str) -> Study:
        study = queries.get_study(db, study_instance_uid=uid)
        if study is None:
            raise HTTPException(status_code=404, detail="no such study")
        return study

    # Health, readiness, metrics (public) -----------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> Any:
        """Readiness: the database answers, the broker accepts a connection, the model
        loads (its card is read through ONNX Runtime)."""
        body: dict[str, Any] = {}
        db_problem = check_database(session_factory)
        body["database"] = db_problem or "ok"
        if time.monotonic() - broker_cache["at"] > 5.0:
            broker_cache["problem"] = check_broker(settings.effective_broker_url)
            broker_cache["at"] = time.monotonic()
        body["broker"] = broker_cache["problem"] or "ok"
        card, model_problem = app.state.model_card.get()
        body["model"] = model_problem or "ok"
        if card is not None:
            body["model_name"] = card.get("name")
            body["model_version"] = card.get("version")
        ready = not (db_problem or broker_cache["problem"] or model_problem)
        body["status"] = "ok" if ready else "unavailable"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        """Prometheus metrics (names prefixed ``triage_``)."""
        return Response(generate_latest(app.state.registry), media_type=CONTENT_TYPE_LATEST)

    # API ---------------------------------------------------------------------------

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_p: Principal = Depends(get_principal)) -> JSONResponse:
        """The OpenAPI document (needs a user like the rest of the API)."""
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
        return JSONResponse(app.openapi_schema)

    @app.get("/api/me", response_model=Me, tags=["auth"])
    def me(request: Request, principal: Principal = Depends(get_principal)) -> Me:
        """The caller, and for a session its CSRF token (send it as ``X-CSRF-Token``)."""
        authenticator: Authenticator = request.app.state.authenticator
        return Me(
            username=principal.user.username,
            role=principal.role,
            auth_method=principal.auth_method,
            csrf_token=(
                authenticator.csrf_token(principal.session_token)
                if principal.session_token
                else None
            ),
        )

    @app.get("/api/worklist", response_model=list[queries.WorklistRow], tags=["worklist"])
    def worklist(
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
        principal: Principal = Depends(require_roles(*ALL_ROLES)),
        db: Session = Depends(get_db),
    ) -> list[queries.WorklistRow]:
        """The worklist, sorted by priority (smaller first), then waiting time (longest
        first). A study that waited past the wait cap is moved up to OVERDUE."""
        try:
            levels = [queries.priority_level(p) for p in priority or []]
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        no_dates = date_from is None and date_to is None
        filters = queries.WorklistFilters(
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
        rows = queries.list_worklist(db, filters=filters, now=utcnow(), wait_cap=wait_cap)
        audit.record(
            db,
            actor=principal.actor,
            action=Action.VIEW_WORKLIST,
            detail={
                "filters": filters.model_dump(mode="json", exclude_defaults=True),
                "rows": len(rows),
            },
        )
        db.commit()
        return rows

    def _detail(db: Session, study: Study) -> queries.StudyDetail:
        return queries.study_detail(
            db,
            study=study,
            now=utcnow(),
            wait_cap=wait_cap,
            viewer_url_template=settings.viewer_url_template,
        )

    @app.get("/api/studies/{study_uid}", response_model=queries.StudyDetail, tags=["worklist"])
    def study(
        study_uid: str,
        principal: Principal = Depends(require_roles(*ALL_ROLES)),
        db: Session = Depends(get_db),
    ) -> queries.StudyDetail:
        """A study: images (evaluated with probability, or skipped with the reason), the
        latest result with its model, SR delivery state, reading state and feedback."""
        found = _study_or_404(db, study_uid)
        detail = _detail(db, found)
        audit.record(
            db,
            actor=principal.actor,
            action=Action.VIEW_STUDY,
            study_id=found.id,
            study_instance_uid=found.study_instance_uid,
        )
        db.commit()
        return detail

    @app.get(
        "/api/studies/{study_uid}/images/{sop_uid}/thumbnail",
        tags=["worklist"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def thumbnail(
        study_uid: str,
        sop_uid: str,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> Response:
        """A PNG preview (at most 256 pixels) of one image of the study."""
        found = _study_or_404(db, study_uid)
        file_path = db.scalar(
            select(Instance.file_path).where(
                Instance.study_id == found.id, Instance.sop_instance_uid == sop_uid
            )
        )
        if file_path is None:
            raise HTTPException(status_code=404, detail="no such image in this study")
        try:
            png = render_thumbnail(file_path)
        except ThumbnailError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        audit.record(
            db,
            actor=principal.actor,
            action=Action.VIEW_IMAGE,
            study_id=found.id,
            study_instance_uid=found.study_instance_uid,
            object_uid=sop_uid,
        )
        db.commit()
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    def _read_state_out(db: Session, found: Study) -> ReadStateOut:
        row = queries.study_detail(db, study=found, now=utcnow(), wait_cap=wait_cap).row
        return ReadStateOut(
            study_instance_uid=found.study_instance_uid,
            read_state=row.read_state,
            claimed_by=row.claimed_by,
        )

    def _action(
        db: Session,
        principal: Principal,
        study_uid: str,
        action: Action,
        force: bool,
    ) -> ReadStateOut:
        found = _study_or_404(db, study_uid)
        if force and principal.role != Role.ADMIN.value:
            raise HTTPException(status_code=403, detail="only admins may force")
        try:
            if action == Action.CLAIM:
                reading.claim_study(db, study=found, user=principal.user, force=force)
            elif action == Action.RELEASE:
                reading.release_study(db, study=found, user=principal.user, force=force)
            else:
                reading.complete_study(db, study=found, user=principal.user)
        except reading.ReadingConflict as exc:
            db.rollback()
            audit.record(
                db,
                actor=principal.actor,
                action=action,
                outcome=Outcome.DENIED,
                study_id=found.id,
                study_instance_uid=found.study_instance_uid,
                detail={"why": str(exc)},
            )
            db.commit()
            raise HTTPException(status_code=409, detail=str(exc)) from None
        audit.record(
            db,
            actor=principal.actor,
            action=action,
            study_id=found.id,
            study_instance_uid=found.study_instance_uid,
            detail={"force": True} if force else None,
        )
        db.commit()
        return _read_state_out(db, found)

    @app.post("/api/studies/{study_uid}/claim", response_model=ReadStateOut, tags=["reading"])
    def claim(
        study_uid: str,
        force: bool = False,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> ReadStateOut:
        """Claim the study for reading (409 when someone else holds it)."""
        return _action(db, principal, study_uid, Action.CLAIM, force)

    @app.post("/api/studies/{study_uid}/release", response_model=ReadStateOut, tags=["reading"])
    def release(
        study_uid: str,
        force: bool = False,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> ReadStateOut:
        """Give the study back to the worklist."""
        return _action(db, principal, study_uid, Action.RELEASE, force)

    @app.post("/api/studies/{study_uid}/complete", response_model=ReadStateOut, tags=["reading"])
    def complete(
        study_uid: str,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> ReadStateOut:
        """Mark the study read (claims it first when unclaimed)."""
        return _action(db, principal, study_uid, Action.COMPLETE, False)

    @app.post(
        "/api/studies/{study_uid}/feedback",
        response_model=FeedbackSaved,
        status_code=201,
        tags=["reading"],
    )
    def feedback(
        study_uid: str,
        body: FeedbackIn,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> FeedbackSaved:
        """Record the radiologist's own Normal/Abnormal label (and agree/disagree) for
        the study's latest result; sending again replaces one's earlier feedback."""
        found = _study_or_404(db, study_uid)
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
        audit.record(
            db,
            actor=principal.actor,
            action=Action.FEEDBACK,
            study_id=found.id,
            study_instance_uid=found.study_instance_uid,
            detail={"label": row.label, "agree": row.agree, "revision": row.revision},
        )
        db.commit()
        return FeedbackSaved(
            study_instance_uid=found.study_instance_uid,
            label=row.label,
            agree=row.agree,
            ai_decision=row.ai_decision,
            revision=row.revision,
        )

    @app.get("/api/model-card", tags=["model"])
    def model_card(_p: Principal = Depends(require_roles(*ALL_ROLES))) -> Any:
        """The card of the model this node is configured with (503 when unreadable)."""
        card, problem = app.state.model_card.get()
        if card is None:
            raise HTTPException(status_code=503, detail=f"model card unavailable: {problem}")
        return card

    @app.get("/api/monitoring/agreement", tags=["monitoring"])
    def monitoring_agreement(
        since: datetime | None = None,
        until: datetime | None = None,
        model_version: str | None = None,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> dict[str, Any]:
        """AI agreement, sensitivity and specificity against the radiologists' labels,
        overall, by sex, by age band and by model (Wilson 95 % intervals)."""
        report = queries.agreement_report(db, since=since, until=until, model_version=model_version)
        audit.record(db, actor=principal.actor, action=Action.VIEW_MONITORING)
        db.commit()
        return report

    @app.get("/api/monitoring/probabilities", tags=["monitoring"])
    def monitoring_probabilities(
        days: Annotated[int, Query(ge=1, le=366)] = 30,
        principal: Principal = Depends(require_roles(*READERS)),
        db: Session = Depends(get_db),
    ) -> list[dict[str, Any]]:
        """Daily distribution of the study probabilities (histogram, mean, median, p90,
        abnormal rate), so that drift shows."""
        out = queries.probability_distribution(db, days=days, now=utcnow())
        audit.record(db, actor=principal.actor, action=Action.VIEW_MONITORING)
        db.commit()
        return out

    @app.get("/api/audit", tags=["admin"])
    def audit_log(
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        before_id: int | None = None,
        username: str | None = None,
        action: str | None = None,
        study_uid: str | None = None,
        principal: Principal = Depends(require_roles(Role.ADMIN)),
        db: Session = Depends(get_db),
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
        audit.record(db, actor=principal.actor, action=Action.VIEW_AUDIT)
        db.commit()
        return events

    # Web page ----------------------------------------------------------------------

    def _page_context(request: Request, principal: Principal, **extra: Any) -> dict[str, Any]:
        authenticator: Authenticator = request.app.state.authenticator
        return {
            "user": principal.user,
            "csrf_token": authenticator.csrf_token(principal.session_token or ""),
            **extra,
        }

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "error": None}
        )

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=256)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        next: Annotated[str, Form()] = "/",
        db: Session = Depends(get_db),
    ) -> Response:
        authenticator: Authenticator = request.app.state.authenticator
        try:
            token, _user = authenticator.login(
                db, username=username, password=password, client_ip=client_ip(request)
            )
        except LoginRateLimited as exc:
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "error": "Too many failed sign-ins. Try later."},
                status_code=429,
                headers={"Retry-After": str(exc.retry_after)},
            )
        except ServiceAccountLogin as exc:
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "error": f"{exc}."},
                status_code=403,
            )
        except LoginFailed:
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "error": "Wrong user name or password."},
                status_code=401,
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(authenticator.session_lifetime.total_seconds()),
            httponly=True,
            secure=settings.session_cookie_secure,
            samesite="strict",
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(
        request: Request,
        principal: Principal = Depends(get_principal),
        db: Session = Depends(get_db),
    ) -> Response:
        request.app.state.authenticator.logout(db, principal=principal)
        db.commit()
        response = JSONResponse({"status": "signed out"})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(
        request: Request,
        principal: Principal = Depends(require_roles(*ALL_ROLES, page=True)),
    ) -> Response:
        return templates.TemplateResponse(
            request, "worklist.html", _page_context(request, principal)
        )

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(
        request: Request,
        study_uid: str,
        principal: Principal = Depends(require_roles(*ALL_ROLES, page=True)),
        db: Session = Depends(get_db),
    ) -> Response:
        found = _study_or_404(db, study_uid)
        detail = _detail(db, found)
        audit.record(
            db,
            actor=principal.actor,
            action=Action.VIEW_STUDY,
            study_id=found.id,
            study_instance_uid=found.study_instance_uid,
            detail={"page": True},
        )
        db.commit()
        mine = next(
            (f for f in reversed(detail.feedback) if f.username == principal.user.username), None
        )
        return templates.TemplateResponse(
            request,
            "study.html",
            _page_context(
                request,
                principal,
                d=detail,
                r=detail.row,
                mine=mine,
                can_read=principal.role in {r.value for r in READERS},
                has_viewer=bool(detail.viewer_url),
                **population_context(app.state.model_card.get()[0], detail.row.patient_age),
            ),
        )

    @app.get("/studies/{study_uid}/viewer", include_in_schema=False)
    def open_viewer(
        study_uid: str,
        principal: Principal = Depends(require_roles(*ALL_ROLES, page=True)),
        db: Session = Depends(get_db),
    ) -> Response:
        found = _study_or_404(db, study_uid)
        url = queries.viewer_url(settings.viewer_url_template, found)
        if not url:
            raise HTTPException(status_code=404, detail="no viewer configured")
        audit.record(
            db,
            actor=principal.actor,
            action=Action.OPEN_VIEWER,
            study_id=found.id,
            study_instance_uid=found.study_instance_uid,
        )
        db.commit()
        return RedirectResponse(url, status_code=303)

    @app.get("/monitoring", response_class=HTMLResponse, include_in_schema=False)
    def monitoring_page(
        request: Request,
        days: Annotated[int, Query(ge=1, le=366)] = 30,
        principal: Principal = Depends(require_roles(*READERS, page=True)),
        db: Session = Depends(get_db),
    ) -> Response:
        report = queries.agreement_report(db)
        daily = queries.probability_distribution(db, days=days, now=utcnow())
        audit.record(db, actor=principal.actor, action=Action.VIEW_MONITORING)
        db.commit()
        groups = [("Overall", "all", report["overall"])]
        groups += [("Sex", k, v) for k, v in report["by_sex"].items()]
        groups += [("Age band", k, v) for k, v in report["by_age_band"].items()]
        groups += [("Model", k, v) for k, v in report["by_model"].items()]
        return templates.TemplateResponse(
            request,
            "monitoring.html",
            _page_context(
                request,
                principal,
                groups=groups,
                undecided=report["undecided"],
                daily=daily,
                days=days,
            ),
        )

    app.state.csrf_header = CSRF_HEADER
    return app


def _dicom_date(value: str | None) -> str:
    """``20261123`` -> ``2026-11-23`` (other values unchanged)."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "—"


def _safe_next(value: str) -> str:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
