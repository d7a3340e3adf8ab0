"""The dependencies of the routes, and :func:`audited`.

A route names what it needs in its signature and FastAPI provides it, once per
request:

- :data:`SessionDep`: the request's database session (every dependency of a request
  shares it);
- :data:`SettingsDep`, :data:`AuthenticatorDep`, :data:`TemplatesDep`: what
  :func:`worklist.http.app.create_app` put on ``app.state``;
- the caller, in a role: :data:`AnyUser`, :data:`Reader` (radiologists and admins),
  :data:`Admin`, and for web pages :data:`PageUser` and :data:`PageReader`, which
  redirect to ``/login`` instead of answering 401. :data:`Caller` is any
  authenticated caller whatever the role;
- :data:`PathStudy`: the study named by ``{study_uid}`` in the path (404 when none).

Routes declare the caller before the study, so an anonymous request gets 401 before
a 404 could tell it which studies exist.

No ``from __future__ import annotations`` here: :func:`require_roles` builds an
``Annotated`` dependency on a local, which FastAPI could not resolve from a string.
"""

from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from worklist import audit, queries
from worklist.audit import Action, Outcome
from worklist.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator, Principal
from worklist.core.clock import utcnow
from worklist.core.settings import Settings
from worklist.tables import Role, Study
from worklist.views import StudyDetail

__all__ = [
    "ALL_ROLES",
    "READERS",
    "Admin",
    "AnyUser",
    "AuthenticatorDep",
    "Caller",
    "LoginRequired",
    "PageReader",
    "PageUser",
    "PathStudy",
    "Reader",
    "SessionDep",
    "SettingsDep",
    "TemplatesDep",
    "audited",
    "client_ip",
    "require_roles",
    "study_detail",
    "wait_cap",
]

ALL_ROLES = (Role.RADIOLOGIST, Role.ADMIN, Role.SERVICE)
READERS = (Role.RADIOLOGIST, Role.ADMIN)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):
    """A web page was asked for without a session (the app redirects to /login)."""

    def __init__(self, next_url: str) -> None:
        super().__init__("login required")
        self.next_url = next_url


# What the app holds --------------------------------------------------------------------


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, from the app's session factory."""
    with request.app.state.session_factory() as session:
        yield session


def get_settings(request: Request) -> Settings:
    """The node's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_authenticator(request: Request) -> Authenticator:
    """The app's :class:`~worklist.auth.Authenticator`."""
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


def get_templates(request: Request) -> Jinja2Templates:
    """The web page's templates."""
    templates: Jinja2Templates = request.app.state.templates
    return templates


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]
TemplatesDep = Annotated[Jinja2Templates, Depends(get_templates)]


# The audit log ---------------------------------------------------------------------------


def audited(
    db: Session,
    principal: Principal,
    action: Action,
    *,
    study: Study | None = None,
    object_uid: str | None = None,
    detail: Mapping[str, Any] | None = None,
    outcome: Outcome = Outcome.SUCCESS,
) -> None:
    """Write the caller's audit event and commit it with whatever the request changed.

    Parameters
    ----------
    db : Session
        The request's session.
    principal : Principal
        Who acts.
    action : Action
    study : Study, optional
        The study concerned.
    object_uid : str, optional
        The image concerned (SOP Instance UID).
    detail : mapping, optional
        Small context without patient identifiers.
    outcome : Outcome
        Default success.
    """
    audit.record(
        db,
        actor=principal.actor,
        action=action,
        outcome=outcome,
        study_id=study.id if study is not None else None,
        study_instance_uid=study.study_instance_uid if study is not None else None,
        object_uid=object_uid,
        detail=detail,
    )
    db.commit()


# The caller ------------------------------------------------------------------------------


def client_ip(request: Request) -> str | None:
    """The caller's address as the socket sees it (proxies are not trusted)."""
    return request.client.host if request.client else None


def _authenticate(request: Request, db: Session) -> Principal | None:
    return get_authenticator(request).authenticate(
        db,
        authorization=request.headers.get("authorization"),
        cookie=request.cookies.get(SESSION_COOKIE),
        client_ip=client_ip(request),
    )


def get_principal(request: Request, db: SessionDep) -> Principal:
    """The authenticated caller of an API endpoint (HTTP 401 when none).

    A session caller of a state-changing method must send the CSRF token
    (HTTP 403, audited, otherwise).
    """
    principal = _authenticate(request, db)
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="authentication required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in SAFE_METHODS and principal.auth_method == "session":
        supplied = request.headers.get(CSRF_HEADER)
        if not get_authenticator(request).check_csrf(principal.session_token, supplied):
            why = {"path": request.url.path, "why": "missing or wrong CSRF token"}
            audited(db, principal, Action.ACCESS_DENIED, outcome=Outcome.DENIED, detail=why)
            raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
    return principal


def page_principal(request: Request, db: SessionDep) -> Principal:
    """The signed-in user of a web page (redirects to /login when none)."""
    principal = _authenticate(request, db)
    if principal is None:
        next_url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(next_url)
    return principal


def require_roles(*roles: Role, page: bool = False) -> Callable[..., Principal]:
    """A dependency that lets only ``roles`` through (HTTP 403, audited, otherwise).

    Parameters
    ----------
    *roles : Role
    page : bool
        For web pages (redirect to /login when not signed in).

    Returns
    -------
    callable
        A FastAPI dependency returning the :class:`~worklist.auth.Principal`.
    """
    allowed = {r.value for r in roles}
    base = page_principal if page else get_principal

    def dependency(
        request: Request, principal: Annotated[Principal, Depends(base)], db: SessionDep
    ) -> Principal:
        if principal.role not in allowed:
            why = {"path": request.url.path, "method": request.method}
            audited(db, principal, Action.ACCESS_DENIED, outcome=Outcome.DENIED, detail=why)
            raise HTTPException(status_code=403, detail="your role may not do this")
        return principal

    return dependency


Caller = Annotated[Principal, Depends(get_principal)]
AnyUser = Annotated[Principal, Depends(require_roles(*ALL_ROLES))]
Reader = Annotated[Principal, Depends(require_roles(*READERS))]
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
PageUser = Annotated[Principal, Depends(require_roles(*ALL_ROLES, page=True))]
PageReader = Annotated[Principal, Depends(require_roles(*READERS, page=True))]


# The study in the path -------------------------------------------------------------------


def path_study(study_uid: str, db: SessionDep) -> Study:
    """The study named by ``{study_uid}`` (HTTP 404 when none)."""
    study = queries.get_study(db, study_instance_uid=study_uid)
    if study is None:
        raise HTTPException(status_code=404, detail="no such study")
    return study


PathStudy = Annotated[Study, Depends(path_study)]


def wait_cap(settings: Settings) -> timedelta:
    """How long a study may wait before it is moved up to OVERDUE."""
    return timedelta(minutes=settings.wait_cap_minutes)


def study_detail(db: Session, study: Study, settings: Settings) -> StudyDetail:
    """The study as ``GET /api/studies/{uid}`` and the study page show it, now.

    Parameters
    ----------
    db : Session
    study : Study
    settings : Settings

    Returns
    -------
    StudyDetail
    """
    return queries.study_detail(
        db,
        study=study,
        now=utcnow(),
        wait_cap=wait_cap(settings),
        viewer_url_template=settings.viewer_url_template,
    )
