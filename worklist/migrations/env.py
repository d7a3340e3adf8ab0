"""Alembic environment: the URL comes from the caller, never from a file."""

from alembic import context

from worklist import tables  # noqa: F401 - registers the tables on Base.metadata
from worklist.core.db import Base, make_engine

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the migrations")


def run_migrations_online() -> None:
    """Run the migrations on a live connection."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


run_migrations_online()
