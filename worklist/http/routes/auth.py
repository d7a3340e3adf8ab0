"""Signing in and out, and who the caller is.

People sign in on ``/login`` and get a session cookie; systems send a bearer token
(:mod:`worklist.auth`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from worklist.auth import SESSION_COOKIE, LoginFailed, LoginRateLimited, ServiceAccountLogin
from worklist.http.deps import (
    AuthenticatorDep,
    Caller,
    SessionDep,
    SettingsDep,
    TemplatesDep,
    client_ip,
)
from worklist.http.schemas import Me

router = APIRouter()

TOO_MANY = "Too many failed sign-ins. Try later."
WRONG = "Wrong user name or password."


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, templates: TemplatesDep, next: str = "/") -> Response:
    """The sign-in form."""
    return login_form(request, templates, next)


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    authenticator: AuthenticatorDep,
    templates: TemplatesDep,
    username: Annotated[str, Form(max_length=256)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Sign in: a session cookie, and on to ``next`` (401 wrong, 429 too many tries)."""
    try:
        token, _user = authenticator.login(
            db, username=username, password=password, client_ip=client_ip(request)
        )
    except LoginRateLimited as exc:
        retry = {"Retry-After": str(exc.retry_after)}
        return login_form(request, templates, next, TOO_MANY, status_code=429, headers=retry)
    except ServiceAccountLogin as exc:
        return login_form(request, templates, next, f"{exc}.", status_code=403)
    except LoginFailed:
        return login_form(request, templates, next, WRONG, status_code=401)
    response = RedirectResponse(safe_next(next), status_code=303)
    lifetime = int(authenticator.session_lifetime.total_seconds())
    set_session_cookie(response, token, lifetime, secure=settings.session_cookie_secure)
    return response


@router.post("/logout", include_in_schema=False)
def logout(principal: Caller, db: SessionDep, authenticator: AuthenticatorDep) -> Response:
    """End the caller's session (the cookie goes too)."""
    authenticator.logout(db, principal=principal)
    db.commit()
    response = JSONResponse({"status": "signed out"})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/api/me", response_model=Me, tags=["auth"])
def me(principal: Caller, authenticator: AuthenticatorDep) -> Me:
    """The caller, and for a session its CSRF token (send it as ``X-CSRF-Token``)."""
    session = principal.session_token
    return Me(
        username=principal.user.username,
        role=principal.role,
        auth_method=principal.auth_method,
        csrf_token=authenticator.csrf_token(session) if session else None,
    )


@router.get("/api/openapi.json", include_in_schema=False)
def openapi(request: Request, _principal: Caller) -> JSONResponse:
    """The OpenAPI document (needs a user like the rest of the API)."""
    return JSONResponse(request.app.openapi())


def login_form(
    request: Request,
    templates: Jinja2Templates,
    next_url: str,
    error: str | None = None,
    **response: Any,
) -> Response:
    """The sign-in page, with an error message after a failed attempt."""
    context = {"next": safe_next(next_url), "error": error}
    return templates.TemplateResponse(request, "login.html", context, **response)


def set_session_cookie(response: Response, token: str, max_age: int, *, secure: bool) -> None:
    """The session cookie: ``HttpOnly``, ``SameSite=Strict``, the whole site."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        secure=secure,
        samesite="strict",
        path="/",
    )


def safe_next(value: str) -> str:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
