"""The outbox and C-STORE delivery, without Celery: one failing destination never holds
back the others; retries with backoff, then failed; the state is in the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import free_port
from tests.integration.triage.conftest import Pacs
from tests.unit.triage.conftest import make_stable
from triage.pipeline import triage_study
from triage.tasks import WorkerContext, deliver_one
from worklist.core.clock import utcnow
from worklist.core.settings import load_settings
from worklist.outbox import due_deliveries
from worklist.tables import Delivery


@pytest.fixture
def ingest(session_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.support.ingest import ingest_file

    return lambda path: ingest_file(session_factory, Path(path), tmp_path / "spool")


def test_failing_destination_does_not_hold_back_the_other(
    session_factory,
    tmp_path: Path,
    pacs: Pacs,
    tiny_model: Path,
    ingest,
    shared_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    from models.runtime import Classifier

    dead = f"DEAD@127.0.0.1:{free_port()}"
    settings = load_settings(
        data_dir=tmp_path / "node",
        model_path=tiny_model,
        destinations=f"{dead},{pacs.destination}",
        delivery_retry_hours=1,
        delivery_backoff_seconds=0.01,
    )
    study_id = ingest(shared_data / "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm")
    (handoff,) = make_stable(session_factory)
    out = triage_study(
        session_factory,
        settings,
        Classifier.load(tiny_model),
        study_id,
        handoff.revision,
    )
    ctx = WorkerContext(settings, session_factory=session_factory)
    states = {}
    for delivery_id in out.deliveries:
        states[delivery_id] = deliver_one(ctx, delivery_id)
    with session_factory() as session:
        rows = {d.destination: d for d in session.scalars(select(Delivery))}
    assert rows[pacs.destination].state == "delivered"
    assert rows[dead].state == "pending" and rows[dead].attempts == 1
    assert "association" in rows[dead].last_error
    assert len(pacs.received()) == 1
    # Second attempt when due, after the retry horizon (1 h) has passed: then failed.
    with session_factory() as session:
        due = due_deliveries(session, now=utcnow() + timedelta(seconds=5))
    assert due == [rows[dead].id]
    with session_factory.begin() as session:
        row = session.get(Delivery, rows[dead].id)
        row.next_attempt_at = utcnow()
        row.created_at = utcnow() - timedelta(hours=1, seconds=1)
    assert deliver_one(ctx, rows[dead].id) == "failed"
    with session_factory() as session:
        row = session.get(Delivery, rows[dead].id)
        assert row.state == "failed" and row.attempts == 2
    assert deliver_one(ctx, rows[dead].id) == "not due"
