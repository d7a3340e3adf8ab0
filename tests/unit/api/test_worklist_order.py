"""The worklist's SQL order and pages equal the Python sort they replace (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from bench.worklist_query import reference_list_worklist
from worklist.accounts import create_user
from worklist.queries import list_worklist
from worklist.reading import claim_study, complete_study, release_study
from worklist.tables import ReadState, Series, Study, StudyState, TriageResult
from worklist.views import WorklistFilters

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WAIT_CAP = timedelta(minutes=60)
REQUESTED = (None, "", "STAT", "stat", " HIGH ", "ROUTINE", "MEDIUM", "LOW", "URGENT")
LEVELS = (0, 5, 10, 20, 25, 30, 40, 50, 60)


def _seed(session: Any, rng: random.Random, count: int) -> None:
    readers = [
        create_user(session, username=f"reader{i}", password=f"a long passphrase {i}", role="admin")
        for i in range(2)
    ]
    # A few shared arrival times, so that ties are broken by the Study Instance UID,
    # and UIDs whose byte order differs from a locale's (1.2.10 < 1.2.9 < 1.29).
    arrivals = [NOW - timedelta(minutes=rng.uniform(0, 300)) for _ in range(40)]
    arrivals.append(NOW - WAIT_CAP)  # exactly at the cap: not overdue
    studies = []
    for i in range(count):
        arrived = rng.choice(arrivals)
        study = Study(
            study_instance_uid=f"1.2.{rng.randint(1, 40)}.{i}" + rng.choice(("", ".1", ".10")),
            requested_priority=rng.choice(REQUESTED),
            study_date=rng.choice((None, arrived.strftime("%Y%m%d"), "20261128")),
            state=rng.choice(list(StudyState)).value,
            revision=2,
            instance_count=1,
            first_received_at=arrived,
            last_received_at=arrived,
        )
        session.add(study)
        studies.append(study)
    session.flush()
    for i, study in enumerate(studies):
        for modality in rng.sample(("DX", "CR"), rng.randint(0, 2)):
            session.add(
                Series(
                    study_id=study.id,
                    series_instance_uid=f"{study.study_instance_uid}.{modality}.{i}",
                    modality=modality,
                )
            )
        for revision in range(1, rng.randint(0, 2) + 1):
            arrived = study.first_received_at
            session.add(
                TriageResult(
                    study_id=study.id,
                    revision=revision,
                    status="triaged",
                    decision=rng.choice(("normal", "abnormal")),
                    probability=rng.random(),
                    aggregation="max",
                    operating_point="balanced",
                    model_name="test",
                    model_version="1",
                    model_sha256="0" * 64,
                    priority=rng.choice(LEVELS),
                    priority_reason="test",
                    started_at=arrived,
                    finished_at=arrived + timedelta(seconds=revision),
                )
            )
    session.flush()
    # Reading states through the reading service (which keeps Study.read_state).
    for study in studies:
        action = rng.random()
        reader = rng.choice(readers)
        if action < 0.35:
            claim_study(session, study=study, user=reader)
        elif action < 0.6:
            complete_study(session, study=study, user=reader)
        elif action < 0.7:
            claim_study(session, study=study, user=reader)
            release_study(session, study=study, user=reader)
    session.commit()


FILTERS: list[dict[str, Any]] = [
    {},
    {"limit": 1000},
    {"offset": 37, "limit": 50},
    {"offset": 120, "limit": 25},
    {"read_state": ["unread", "claimed", "completed"], "limit": 1000},
    {"read_state": ["completed"], "limit": 1000},
    {"read_state": ["claimed"], "offset": 3, "limit": 10},
    {"priority": [10, 50], "limit": 1000},
    {"priority": [0], "limit": 1000},
    {"state": ["triaged", "queued"], "limit": 1000},
    {"modality": ["cr"], "limit": 1000},
    {"date_from": date(2026, 11, 29), "limit": 1000},
    {"date_to": date(2026, 11, 28), "limit": 1000},
    {"received_within_days": 1, "limit": 1000},
]


@pytest.mark.parametrize("seed", [1, 2])
def test_sql_order_and_pages_equal_the_python_sort(session_factory: Any, seed: int) -> None:
    rng = random.Random(seed)
    with session_factory() as session:
        _seed(session, rng, 300)
    with session_factory() as session:
        states = set(session.scalars(select(Study.read_state)))
        assert states == {r.value for r in ReadState}
        for values in FILTERS:
            filters = WorklistFilters(**values)
            expected = reference_list_worklist(session, filters=filters, now=NOW, wait_cap=WAIT_CAP)
            got = list_worklist(session, filters=filters, now=NOW, wait_cap=WAIT_CAP)
            assert [r.study_instance_uid for r in got] == [
                r.study_instance_uid for r in expected
            ], values
            assert got == expected, values
        everything = list_worklist(
            session,
            filters=WorklistFilters(read_state=["unread", "claimed", "completed"], limit=1000),
            now=NOW,
            wait_cap=WAIT_CAP,
        )
        assert len(everything) == 300
        levels = {r.priority for r in everything}
        assert {0, 10, 40, 50}.issubset(levels)  # STAT, overdue, pending, normal all present


def test_migration_0004_matches_the_studies_model(migrated_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worklist.core.db import Base, make_engine

    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            index = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("studies")}
    finally:
        engine.dispose()
    assert [d for d in diff if "'studies'" in repr(d)] == []
    assert index["ix_studies_read_state_received"] == ["read_state", "first_received_at"]


def test_migration_0004_copies_each_reading_state_onto_its_study(database_url: str) -> None:
    from worklist.core.db import make_engine
    from worklist.core.migrate import upgrade

    upgrade(database_url, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for i in range(3):
                conn.execute(
                    text(
                        "INSERT INTO studies (id, study_instance_uid, state, revision, "
                        "instance_count, first_received_at, last_received_at) "
                        "VALUES (:i, :uid, 'triaged', 1, 1, :at, :at)"
                    ),
                    {"i": i + 1, "uid": f"1.2.3.{i}", "at": NOW},
                )
            conn.execute(
                text(
                    "INSERT INTO users (id, username, role, active, created_at) "
                    "VALUES (1, 'reader', 'radiologist', :yes, :at)"
                ),
                {"yes": True, "at": NOW},
            )
            for study_id, state in ((2, "claimed"), (3, "completed")):
                conn.execute(
                    text(
                        "INSERT INTO study_reads (study_id, state, user_id, claimed_at, revision) "
                        "VALUES (:s, :state, 1, :at, 1)"
                    ),
                    {"s": study_id, "state": state, "at": NOW},
                )
        upgrade(database_url)
        with engine.connect() as conn:
            states = conn.execute(text("SELECT id, read_state FROM studies ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in states] == [(1, "unread"), (2, "claimed"), (3, "completed")]
