"""HTTP API of the node (FastAPI): health and readiness for now.

The app is built by :func:`create_app` from the settings and a session factory; nothing
is created at import time.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from worklist.settings import Settings

log = logging.getLogger(__name__)


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
    app = FastAPI(title="cxr-triage-node", version="0.1.0")
    app.state.settings = settings
    app.state.session_factory = session_factory

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Any:
        """Readiness: the database answers."""
        problem = check_database(session_factory)
        if problem:
            return JSONResponse({"status": "unavailable", "database": problem}, status_code=503)
        return {"status": "ok", "database": "ok"}

    return app
