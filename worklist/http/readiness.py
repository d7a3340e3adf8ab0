"""What ``/readyz`` checks: the database answers, the broker accepts a connection, the
model loads.

Each check returns None when all is well, else the error text; none raises.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from worklist.core.settings import Settings

__all__ = ["BrokerCheck", "ModelCardCache", "check_broker", "check_database"]

log = logging.getLogger(__name__)


def check_database(session_factory: sessionmaker[Session]) -> str | None:
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


class BrokerCheck:
    """:func:`check_broker`, asked at most every ``every`` seconds.

    Parameters
    ----------
    url : str
        Broker URL.
    every : float
        Seconds during which the last answer is reused.
    """

    def __init__(self, url: str, every: float = 5.0) -> None:
        self._url = url
        self._every = every
        self._at = 0.0
        self._problem: str | None = None

    def problem(self) -> str | None:
        """Return None when the broker accepted a connection lately, else the error text."""
        if time.monotonic() - self._at > self._every:
            self._problem = check_broker(self._url)
            self._at = time.monotonic()
        return self._problem


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
