"""The node's clock: every timestamp it stores is an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC.

    Returns
    -------
    datetime
    """
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (SQLite hands back naive ones).

    Parameters
    ----------
    value : datetime
        Aware, or naive and meaning UTC.

    Returns
    -------
    datetime
    """
    return value if value.tzinfo else value.replace(tzinfo=UTC)
