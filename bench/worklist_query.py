"""Benchmark: ``GET /api/worklist`` (first page, 50 rows) against a year of studies.

For each database (SQLite, and PostgreSQL when reachable) and each study count
(default 10,000 and 100,000), a fresh database is migrated and seeded with a
hospital's history: most studies read (``completed``), a backlog of studies in
reading (unread, some claimed) from the last two days, most with a triage result.
It then measures, in the same run:

- ``http``: ``GET /api/worklist?limit=50`` through the app (FastAPI TestClient,
  bearer token), which runs :func:`worklist.queries.list_worklist`;
- ``sql``: :func:`worklist.queries.list_worklist` called directly (the query that
  orders and pages in the database);
- ``python``: :func:`reference_list_worklist`, the previous algorithm, kept here
  only as the reference: it loads every matching study with its latest result and
  sorts and pages in Python.

Run::

    nice -n 10 .venv/bin/python -m bench.worklist_query [--counts 10000 100000]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

The PostgreSQL database named in the URL is used as the admin connection; each run
creates and drops its own database beside it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, exists, func, insert, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

from worklist.queries import _modalities, _row
from worklist.tables import (
    ReadState,
    Series,
    Study,
    StudyRead,
    StudyState,
    TriageResult,
    User,
)
from worklist.views import WorklistFilters, WorklistRow

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LEVELS = (0, 20, 30, 40, 50, 60)
REQUESTED = (None, None, None, "STAT", "HIGH", "ROUTINE", "LOW", " medium ", "")


def _dicom_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def reference_list_worklist(
    session: Session, *, filters: WorklistFilters, now: datetime, wait_cap: timedelta
) -> list[WorklistRow]:
    """The worklist as it was computed before the query ordered in SQL (the reference).

    Loads every matching study with its latest result (a GROUP BY over all results)
    and its reading state, builds every row, sorts them in Python by (effective
    priority, arrival, Study Instance UID) and pages the list.

    Parameters
    ----------
    session : Session
    filters : WorklistFilters
    now : datetime
    wait_cap : timedelta

    Returns
    -------
    list of WorklistRow
    """
    latest = (
        select(TriageResult.study_id, func.max(TriageResult.revision).label("revision"))
        .group_by(TriageResult.study_id)
        .subquery()
    )
    query = (
        select(Study, TriageResult, StudyRead, User.username)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(
            TriageResult,
            and_(TriageResult.study_id == Study.id, TriageResult.revision == latest.c.revision),
        )
        .outerjoin(StudyRead, StudyRead.study_id == Study.id)
        .outerjoin(User, User.id == StudyRead.user_id)
    )
    if filters.state:
        query = query.where(Study.state.in_(filters.state))
    read_states = filters.read_state or [ReadState.UNREAD.value, ReadState.CLAIMED.value]
    conditions = []
    if ReadState.UNREAD.value in read_states:
        conditions.append(StudyRead.id.is_(None))
    others = [s for s in read_states if s != ReadState.UNREAD.value]
    if others:
        conditions.append(StudyRead.state.in_(others))
    query = query.where(or_(*conditions)) if conditions else query.where(False)
    if filters.date_from is not None:
        start = datetime.combine(filters.date_from, dtime.min, tzinfo=UTC)
        query = query.where(
            or_(
                Study.study_date >= _dicom_date(filters.date_from),
                and_(Study.study_date.is_(None), Study.first_received_at >= start),
            )
        )
    if filters.date_to is not None:
        end = datetime.combine(filters.date_to + timedelta(days=1), dtime.min, tzinfo=UTC)
        query = query.where(
            or_(
                Study.study_date <= _dicom_date(filters.date_to),
                and_(Study.study_date.is_(None), Study.first_received_at < end),
            )
        )
    if filters.received_within_days is not None:
        query = query.where(
            Study.first_received_at >= now - timedelta(days=filters.received_within_days)
        )
    if filters.modality:
        wanted = [m.upper() for m in filters.modality]
        query = query.where(
            exists().where(Series.study_id == Study.id, Series.modality.in_(wanted))
        )
    records = session.execute(query).all()
    modalities = _modalities(session, [r[0].id for r in records])
    rows = [
        _row(study, result, read, claimer, modalities.get(study.id, []), now=now, wait_cap=wait_cap)
        for study, result, read, claimer in records
    ]
    if filters.priority:
        rows = [r for r in rows if r.priority in set(filters.priority)]
    rows.sort(key=lambda r: (r.priority, r.received_at, r.study_instance_uid))
    return rows[filters.offset : filters.offset + filters.limit]


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed_history` wrote."""

    studies: int
    in_reading: int


def seed_history(
    session: Session,
    *,
    count: int,
    in_reading: int,
    now: datetime,
    reader_id: int,
    seed: int = 0,
    batch: int = 5000,
) -> Seeded:
    """Insert ``count`` studies: a year of read ones and ``in_reading`` recent ones.

    Every study has one DX series; 90 % have a triage result (a few two revisions).
    The ``in_reading`` newest studies (the last two days) are unread, one in ten
    claimed by ``reader_id``; the rest are completed by ``reader_id``. The caller
    commits.

    Parameters
    ----------
    session : Session
    count : int
    in_reading : int
    now : datetime
    reader_id : int
        The user who claimed and completed studies.
    seed : int
    batch : int
        Rows per INSERT statement.

    Returns
    -------
    Seeded
    """
    rng = random.Random(seed)
    tag = uuid.uuid4().int % 10**12
    studies: list[dict[str, Any]] = []
    for i in range(count):
        recent = i >= count - in_reading
        age = (
            timedelta(minutes=rng.uniform(0, 2 * 24 * 60))
            if recent
            else timedelta(days=rng.uniform(2, 365))
        )
        arrived = now - age
        studies.append(
            {
                "study_instance_uid": f"1.2.826.0.1.3680043.10.{tag}.{i}",
                "patient_id": f"P{i:07d}",
                "patient_sex": rng.choice(("F", "M", None)),
                "patient_age": f"{rng.randint(1, 95):03d}Y",
                "accession_number": f"A{i:08d}",
                "study_date": arrived.strftime("%Y%m%d"),
                "study_description": "CHEST PA",
                "requested_priority": rng.choice(REQUESTED),
                "state": StudyState.TRIAGED.value,
                "revision": 1,
                "instance_count": 1,
                "first_received_at": arrived,
                "last_received_at": arrived,
                "read_state": (
                    (ReadState.CLAIMED.value if rng.random() < 0.1 else ReadState.UNREAD.value)
                    if recent
                    else ReadState.COMPLETED.value
                ),
            }
        )
    for chunk in _chunks(studies, batch):
        session.execute(insert(Study), chunk)
    ids = dict(
        session.execute(
            select(Study.study_instance_uid, Study.id).where(
                Study.study_instance_uid.like(f"1.2.826.0.1.3680043.10.{tag}.%")
            )
        ).all()
    )
    series, results, reads = [], [], []
    for study in studies:
        study_id = ids[study["study_instance_uid"]]
        arrived = study["first_received_at"]
        series.append(
            {
                "study_id": study_id,
                "series_instance_uid": f"{study['study_instance_uid']}.1",
                "modality": "DX",
            }
        )
        if rng.random() < 0.9:
            for revision in (1, 2) if rng.random() < 0.05 else (1,):
                results.append(_result(study_id, revision, arrived, rng))
        if study["read_state"] != ReadState.UNREAD.value:
            reads.append(
                {
                    "study_id": study_id,
                    "state": study["read_state"],
                    "user_id": reader_id,
                    "claimed_at": arrived + timedelta(minutes=30),
                    "completed_at": (
                        arrived + timedelta(minutes=40)
                        if study["read_state"] == ReadState.COMPLETED.value
                        else None
                    ),
                    "revision": 1,
                }
            )
    for table, rows in ((Series, series), (TriageResult, results), (StudyRead, reads)):
        for chunk in _chunks(rows, batch):
            session.execute(insert(table), chunk)
    return Seeded(count, in_reading)


def _result(study_id: int, revision: int, arrived: datetime, rng: random.Random) -> dict[str, Any]:
    priority = rng.choice(LEVELS)
    decision = "abnormal" if priority in (20, 30) else "normal" if priority == 50 else None
    return {
        "study_id": study_id,
        "revision": revision,
        "status": "triaged" if decision else "not_evaluated",
        "decision": decision,
        "probability": rng.random() if decision else None,
        "aggregation": "max",
        "operating_point": "balanced",
        "model_name": "bench",
        "model_version": "1",
        "model_sha256": "0" * 64,
        "priority": priority,
        "priority_reason": "bench",
        "started_at": arrived + timedelta(seconds=5),
        "finished_at": arrived + timedelta(seconds=6),
    }


def _chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@contextmanager
def _database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / f'worklist-{uuid.uuid4().hex[:8]}.db'}"
        return
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - PostgreSQL not reachable: skip it
        sys.stderr.write(f"PostgreSQL not reachable ({type(exc).__name__}): skipped\n")
        admin.dispose()
        yield None
        return
    name = f"bench_worklist_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _percentiles(samples: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def _time(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    call()  # warm-up (statement caches, pages)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return _percentiles(samples)


def measure(
    url: str, workdir: Path, *, count: int, in_reading: int, repeats: int
) -> dict[str, Any]:
    """Seed one database and time the three ways of answering the first page.

    Parameters
    ----------
    url : str
        An empty database.
    workdir : Path
        The node's data directory.
    count, in_reading : int
        See :func:`seed_history`.
    repeats : int
        Timed calls of each.

    Returns
    -------
    dict
        ``http``, ``sql`` and ``python`` as (p50, p95) in milliseconds, and ``same``
        (whether the SQL and Python pages are equal).
    """
    from fastapi.testclient import TestClient

    from worklist.accounts import create_token, create_user
    from worklist.core.clock import utcnow
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.core.settings import load_settings
    from worklist.http.app import create_app
    from worklist.queries import list_worklist

    settings = load_settings(
        data_dir=workdir / f"node-{uuid.uuid4().hex[:8]}",
        database_url=url,
        session_secret="bench-only-secret-0123456789abcdef",
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    database = open_database(settings)
    factory: sessionmaker[Session] = database.session_factory
    try:
        now = utcnow()
        with factory() as session:
            reader = create_user(
                session, username="reader", password="bench passphrase 1234", role="radiologist"
            )
            create_user(session, username="ris", password=None, role="service")
            token, _row_ = create_token(session, username="ris", name="bench")
            seed_history(session, count=count, in_reading=in_reading, now=now, reader_id=reader.id)
            session.commit()
        if database.engine.dialect.name == "postgresql":
            with database.engine.connect() as conn:
                conn.execute(text("ANALYZE"))
                conn.commit()
        wait_cap = timedelta(minutes=settings.wait_cap_minutes)
        filters = WorklistFilters(limit=50)
        with factory() as session:
            same = list_worklist(
                session, filters=filters, now=now, wait_cap=wait_cap
            ) == reference_list_worklist(session, filters=filters, now=now, wait_cap=wait_cap)

        def sql() -> object:
            with factory() as session:
                return list_worklist(session, filters=filters, now=utcnow(), wait_cap=wait_cap)

        def python() -> object:
            with factory() as session:
                return reference_list_worklist(
                    session, filters=filters, now=utcnow(), wait_cap=wait_cap
                )

        with TestClient(create_app(settings, factory)) as client:
            headers = {"Authorization": f"Bearer {token}"}

            def http() -> object:
                response = client.get("/api/worklist", params={"limit": 50}, headers=headers)
                assert response.status_code == 200, response.text
                assert len(response.json()) == min(50, in_reading)
                return response

            figures = {
                "http": _time(http, repeats),
                "sql": _time(sql, repeats),
                "python": _time(python, max(5, repeats // 4)),
            }
        return {**figures, "same": same}
    finally:
        database.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table.

    Parameters
    ----------
    argv : sequence of str, optional

    Returns
    -------
    int
        0, or 1 when a SQL page differed from the reference's.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--in-reading", type=int, default=500, help="unread/claimed backlog")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--databases", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)

    header = (
        f"{'database':<11}{'studies':>9}{'in reading':>12}"
        f"{'HTTP p50':>10}{'HTTP p95':>10}{'SQL p50':>9}{'SQL p95':>9}"
        f"{'Python p50':>12}{'Python p95':>12}  same page"
    )
    print("GET /api/worklist, first page (50 rows); milliseconds")
    print(header)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        for kind in args.databases:
            for count in args.counts:
                with _database(kind, Path(tmp), args.postgres_url) as url:
                    if url is None:
                        continue
                    out = measure(
                        url,
                        Path(tmp),
                        count=count,
                        in_reading=args.in_reading,
                        repeats=args.repeats,
                    )
                ok = ok and out["same"]
                print(
                    f"{kind:<11}{count:>9}{args.in_reading:>12}"
                    f"{out['http'][0]:>10.1f}{out['http'][1]:>10.1f}"
                    f"{out['sql'][0]:>9.1f}{out['sql'][1]:>9.1f}"
                    f"{out['python'][0]:>12.1f}{out['python'][1]:>12.1f}  {out['same']}",
                    flush=True,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
