"""The HTTP application: what every request goes through, and the routers.

:func:`create_app` builds it from the settings and a session factory; nothing is
created at import time. The routes are in :mod:`worklist.http.routes`, one module per
resource; what they depend on is in :mod:`worklist.http.deps`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from worklist.auth import Authenticator, session_key
from worklist.core.settings import Settings
from worklist.http.deps import LoginRequired, wait_cap
from worklist.http.readiness import BrokerCheck, ModelCardCache
from worklist.http.routes import ROUTERS
from worklist.http.templating import configure_templates
from worklist.metrics import make_registry

__all__ = ["create_app"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_app(settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
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
    app.state.broker_check = BrokerCheck(settings.effective_broker_url)
    app.state.registry = make_registry(session_factory, wait_cap=wait_cap(settings))
    app.state.templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))
    app.state.templates.env.filters["dicom_date"] = dicom_date
    configure_templates(app.state.templates.env, settings)
    app.middleware("http")(security_headers)
    app.add_exception_handler(LoginRequired, redirect_to_login)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app


async def security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware: the browser security headers; no caching but of static files."""
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def redirect_to_login(request: Request, exc: LoginRequired) -> Response:
    """A web page without a session: to the sign-in page, and back afterwards."""
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)


def dicom_date(value: str | None) -> str:
    """Template filter: ``20261123`` -> ``2026-11-23`` (other values unchanged)."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "—"
