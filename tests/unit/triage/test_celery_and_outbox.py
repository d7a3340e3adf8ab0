"""Celery app configuration, option loading, outbox leases and stalled revisions."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from triage.celery_app import make_celery
from triage.delivery import retry_delay
from triage.worker import settings_to_env
from worklist.core.clock import utcnow
from worklist.core.contracts import DELIVERY_QUEUE, INFERENCE_QUEUE
from worklist.core.settings import SettingsError, load_settings
from worklist.outbox import claim_delivery, due_deliveries, mark_failed_attempt
from worklist.results import stalled_revisions
from worklist.tables import Delivery, Study, TriageClaim

from .conftest import make_stable


def test_celery_app_embedded_defaults(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_poll_seconds=0.05)
    app = make_celery(settings)
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert {q.name for q in conf.task_queues} == {INFERENCE_QUEUE, DELIVERY_QUEUE}
    assert conf.task_routes["triage.triage_study"]["queue"] == INFERENCE_QUEUE
    assert conf.task_routes["triage.deliver"]["queue"] == DELIVERY_QUEUE
    assert conf.broker_transport_options == {"polling_interval": 0.05}
    assert conf.broker_url == f"sqlite:///{(tmp_path / 'broker.db').resolve()}"
    assert conf.broker_transport == "triage.broker:Transport"
    task = app.tasks["triage.triage_study"]
    assert task.acks_late and task.reject_on_worker_lost
    assert "OperationalError" in {e.__name__ for e in task.autoretry_for}
    assert Exception not in task.autoretry_for
    assert "triage.deliver" in app.tasks and "triage.sweep" in app.tasks


def test_celery_app_redis(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/3", lease_seconds=100
    )
    app = make_celery(settings)
    assert app.conf.broker_url == "redis://127.0.0.1:6379/3"
    assert app.conf.broker_transport_options == {"visibility_timeout": 200}


def test_embedded_broker_carries_a_message(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_poll_seconds=0.01)
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(INFERENCE_QUEUE + "-probe")
        queue.put({"study_id": 1})
        assert queue.get(timeout=5).payload == {"study_id": 1}
        queue.close()


def test_triage_tuning_is_checked_by_the_settings(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, aggregation="mean", wait_cap_minutes=30)
    assert settings.aggregation == "mean" and settings.wait_cap_minutes == 30.0
    with pytest.raises(SettingsError, match="TRIAGE_AGGREGATION"):
        load_settings(data_dir=tmp_path, aggregation="median")
    with pytest.raises(SettingsError, match="TRIAGE_HIGH_CONFIDENCE"):
        load_settings(data_dir=tmp_path, high_confidence=1.5)
    with pytest.raises(SettingsError, match="TRIAGE_LEASE_SECONDS"):
        load_settings(data_dir=tmp_path, lease_seconds=0)


def test_delivery_retry_delay_doubles_up_to_its_cap(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, delivery_backoff_seconds=2, delivery_backoff_max_seconds=5
    )
    assert [retry_delay(settings, n) for n in (1, 2, 3, 4)] == [2, 4, 5, 5]


def test_settings_travel_to_a_child_through_the_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(
        data_dir=tmp_path,
        destinations="A@h:1,B@127.0.0.1:2",
        providers="CPUExecutionProvider",
        operating_point="high_sensitivity",
    )
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    again = load_settings()
    assert again == settings


def _result_with_deliveries(session_factory, settings, tiny_classifier, ingest, shared_data):  # type: ignore[no-untyped-def]
    from triage.pipeline import triage_study

    study_id = ingest(shared_data / "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm")
    (handoff,) = make_stable(session_factory)
    return triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision)


def test_a_sending_row_whose_worker_died_is_due_again(
    session_factory,
    tmp_path: Path,
    tiny_model: Path,
    tiny_classifier,
    ingest,
    shared_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "d", model_path=tiny_model, destinations="PACS@127.0.0.1:1"
    )
    out = _result_with_deliveries(session_factory, settings, tiny_classifier, ingest, shared_data)
    (delivery_id,) = out.deliveries
    now = utcnow()
    with session_factory.begin() as session:
        job = claim_delivery(session, delivery_id=delivery_id, lease_seconds=30, now=now)
        assert job is not None and job.attempts == 1
    with session_factory.begin() as session:
        # Taken: not claimable again, not due, until the lease expires.
        assert claim_delivery(session, delivery_id=delivery_id, lease_seconds=30, now=now) is None
        assert due_deliveries(session, now=now + timedelta(seconds=10)) == []
        assert due_deliveries(session, now=now + timedelta(seconds=31)) == [delivery_id]
    with session_factory.begin() as session:
        assert (
            mark_failed_attempt(session, delivery_id=delivery_id, error="x", retry_in=5, now=now)
            == "pending"
        )
        assert due_deliveries(session, now=now + timedelta(seconds=4)) == []
        assert due_deliveries(session, now=now + timedelta(seconds=6)) == [delivery_id]
        assert session.get(Delivery, delivery_id).last_error == "x"


def test_stalled_revisions_are_found(session_factory, ingest, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    study_id = ingest(shared_data / "dicom/real/RG1_J2KI.dcm")
    (handoff,) = make_stable(session_factory)
    now = utcnow()
    with session_factory.begin() as session:
        session.get(Study, study_id).dispatched_at = now
    with session_factory() as session:
        assert stalled_revisions(session, lease_seconds=60, now=now) == []
        assert stalled_revisions(session, lease_seconds=60, now=now + timedelta(seconds=61)) == [
            (study_id, handoff.revision)
        ]
    with session_factory.begin() as session:
        study = session.get(Study, study_id)
        study.state = "triaging"
        session.add(
            TriageClaim(
                study_id=study_id,
                revision=handoff.revision,
                claimed_by="h:1",
                claimed_at=now,
                attempts=1,
            )
        )
    with session_factory() as session:
        assert stalled_revisions(session, lease_seconds=60, now=now + timedelta(seconds=30)) == []
        assert stalled_revisions(session, lease_seconds=60, now=now + timedelta(seconds=61)) == [
            (study_id, handoff.revision)
        ]
        assert session.scalar(select(TriageClaim.claimed_by)) == "h:1"
