"""Migration 0006 on SQLite and PostgreSQL: a result's outbox holds several objects per
destination (the SR and heatmap Secondary Captures); existing rows become SR rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
ROW = (
    "INSERT INTO deliveries (result_id, destination, sop_instance_uid, file_path, state,"
    " attempts, next_attempt_at, created_at, updated_at{kind}) VALUES (1, :dest, :uid,"
    " '/r/x.dcm', 'pending', 0, :at, :at, :at{kind_value})"
)


def _seed_0005(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (id, study_instance_uid, state, revision, instance_count,"
                " first_received_at, last_received_at, read_state)"
                " VALUES (1, '1.2.3', 'triaged', 1, 1, :at, :at, 'unread')"
            ),
            {"at": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO triage_results (id, study_id, revision, status, aggregation,"
                " operating_point, model_name, model_version, model_sha256, priority,"
                " priority_reason, started_at, finished_at) VALUES (1, 1, 1, 'triaged', 'max',"
                " 'balanced', 'm', '1', 'abc', 30, 'abnormal', :at, :at)"
            ),
            {"at": NOW},
        )
        conn.execute(
            text(ROW.format(kind="", kind_value="")),
            {"dest": "PACS@h:104", "uid": "1.2.3.9", "at": NOW},
        )


def _insert(engine, uid: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(
            text(ROW.format(kind=", kind", kind_value=", :kind")),
            {"dest": "PACS@h:104", "uid": uid, "at": NOW, "kind": kind},
        )


def test_0006_keeps_the_sr_rows_and_takes_several_objects(database_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worklist.core.db import Base, make_engine
    from worklist.core.migrate import alembic_config, upgrade

    upgrade(database_url, "0005")
    engine = make_engine(database_url)
    try:
        _seed_0005(engine)
        upgrade(database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT kind FROM deliveries")).scalars().all() == ["sr"]
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diff if "deliveries" in repr(d)] == []
        _insert(engine, "1.2.3.10", "heatmap_sc")  # a second object, same destination
        with pytest.raises(IntegrityError):
            _insert(engine, "1.2.3.10", "heatmap_sc")  # the same object twice
        command.downgrade(alembic_config(database_url), "0005")
        with engine.connect() as conn:
            uids = conn.execute(text("SELECT sop_instance_uid FROM deliveries")).scalars().all()
        assert uids == ["1.2.3.9"]  # the SR stays; the heatmap row cannot
        upgrade(database_url)
    finally:
        engine.dispose()
