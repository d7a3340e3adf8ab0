"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled.

kombu 5.7's SQLAlchemy channel hands every broker transport option it does not
know to :func:`sqlalchemy.create_engine`, so ``polling_interval`` (which the
virtual transport reads to poll faster) makes ``create_engine`` fail. This
transport subclass drops the virtual-transport options before building the engine;
:func:`celery_broker` maps ``sqla+sqlite:///DATA_DIR/broker.db`` to the URL
``sqlite:///DATA_DIR/broker.db`` with Celery's ``broker_transport`` set to this
class, so that ``broker_transport_options={"polling_interval": 0.1}`` works. The
messages and tables are the same as kombu's, so a sender using plain ``sqla+``
(without ``polling_interval``) talks to the same queues.
"""

from __future__ import annotations

from typing import Any

from kombu.transport.sqlalchemy import Channel as _SqlaChannel
from kombu.transport.sqlalchemy import Transport as _SqlaTransport
from sqlalchemy import create_engine

__all__ = ["Channel", "Transport", "celery_broker"]

_NOT_FOR_ENGINE = (
    "queue_tablename",
    "message_tablename",
    "callback",
    "errback",
    "max_retries",
    "interval_start",
    "interval_step",
    "interval_max",
    "retry_errors",
    "polling_interval",
    "visibility_timeout",
)


class Channel(_SqlaChannel):
    """SQLAlchemy channel that keeps virtual-transport options out of ``create_engine``."""

    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in _NOT_FOR_ENGINE}
        if conninfo.hostname.startswith("sqlite"):
            options.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        return create_engine(conninfo.hostname, **options)


class Transport(_SqlaTransport):
    """kombu SQLAlchemy transport using :class:`Channel`."""

    Channel = Channel


def celery_broker(url: str) -> tuple[str, str | None]:
    """Map ``sqla+<url>`` to ``(<url>, "triage.broker:Transport")``.

    Parameters
    ----------
    url : str
        The broker URL from the settings.

    Returns
    -------
    tuple
        ``(broker_url, broker_transport)``; other URLs come back unchanged with
        ``None`` (Celery's choice from the URL scheme).
    """
    if url.startswith("sqla+"):
        return url[len("sqla+") :], f"{__name__}:Transport"
    return url, None
