"""Alembic migrations, run programmatically (``triage-node db upgrade`` and ``serve``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """Build the Alembic configuration for ``database_url``.

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL of the node's database.

    Returns
    -------
    alembic.config.Config
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (default: the newest).

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL of the node's database.
    revision : str
        Target revision.
    """
    command.upgrade(alembic_config(database_url), revision)
