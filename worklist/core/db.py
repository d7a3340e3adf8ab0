"""The database: one engine and session factory per process, opened from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

if TYPE_CHECKING:
    from worklist.core.settings import Settings


class Base(DeclarativeBase):
    """Declarative base of every table of the node."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the process's engine.

    SQLite gets write-ahead logging, a busy timeout and ``synchronous=FULL`` so that a
    committed row survives a power cut, which the SCP relies on before it acknowledges
    an instance. Its directory is created when missing.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL (``sqlite:///...`` or ``postgresql+psycopg://...``;
        plain ``postgresql://`` is mapped to the psycopg 3 driver).
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.

    Returns
    -------
    Engine
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so that BEGIN IMMEDIATE works.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock at the start of every transaction: no upgrade deadlocks.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory bound to ``engine`` (objects stay usable after commit).

    Parameters
    ----------
    engine : Engine

    Returns
    -------
    sessionmaker
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


@dataclass(frozen=True)
class Database:
    """A process's open database: its engine and its session factory."""

    engine: Engine
    session_factory: sessionmaker[Session]

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()


def open_database(settings: Settings, **kwargs: Any) -> Database:
    """Open the node's database (``settings.effective_database_url``).

    Parameters
    ----------
    settings : Settings
        The node's settings.
    **kwargs
        Passed to :func:`make_engine`.

    Returns
    -------
    Database
        Call :meth:`Database.dispose` when the process is done with it.
    """
    engine = make_engine(settings.effective_database_url, **kwargs)
    return Database(engine, make_session_factory(engine))
