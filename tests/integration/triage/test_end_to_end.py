"""End to end: dcmtk storescu -> node (SCP, stability, Celery workers) -> SR at a
dcmtk storescp acting as the PACS; the SR passes dciodvfy and matches the database."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from tests.conftest import REDIS_URL, free_port, wait_until
from tests.integration.scp.helpers import storescu_as_is
from tests.integration.triage.conftest import (
    FAST_OPTIONS,
    Node,
    Pacs,
    start_worker_process,
)
from triage.sr import read_sr_summary
from worklist.tables import Delivery, Study, TriageClaim, TriageResult

REAL = "dicom/real"


def make_node_settings(tmp_path: Path, model: Path, destinations: str, **overrides: Any):  # type: ignore[no-untyped-def]
    from worklist.core.settings import load_settings

    values: dict[str, Any] = {
        "data_dir": tmp_path / "node",
        "dicom_host": "127.0.0.1",
        "dicom_port": free_port(),
        "min_free_mb": 0,
        "stable_seconds": 1.0,
        "stability_poll_seconds": 0.1,
        "destinations": destinations,
        "model_path": model,
    }
    values.update(overrides)
    return load_settings(**values)


def start_scp(settings: Any) -> Node:
    from dicom_scp.server import start_node_scp
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.migrate import upgrade

    upgrade(settings.effective_database_url)
    session_factory = make_session_factory(make_engine(settings.effective_database_url))
    node = Node(settings, session_factory)
    # The SCP's own queue (dicom_scp.queue.CeleryTriageQueue) sends by task name.
    node.scp = start_node_scp(settings, session_factory)
    return node


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def sr_at_pacs(pacs: Pacs, sop_uid: str) -> Path | None:
    for path in pacs.received():
        if sop_uid in path.name:
            return path
    return None


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def wait_for_results(node: Node, study_uids: list[str], timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with node.session_factory() as session:
            rows = session.execute(
                select(Study.study_instance_uid, TriageResult)
                .join(TriageResult, TriageResult.study_id == Study.id)
                .where(Study.study_instance_uid.in_(study_uids))
            ).all()
            if len({uid for uid, _ in rows}) < len(study_uids):
                return None
            pending = session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.state != "delivered")
            )
            return None if pending else {uid: r for uid, r in rows}

    return wait_until(done, timeout=timeout, interval=0.2, what="results delivered")


def check_sr_matches_database(node: Node, pacs: Pacs, result: TriageResult) -> None:
    path = wait_until(
        lambda: sr_at_pacs(pacs, result.sr_sop_instance_uid), timeout=20, what="SR file at the PACS"
    )
    assert dciodvfy_errors(path) == []
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0
    summary = read_sr_summary(path)
    assert summary["finding"] == result.decision
    assert summary["probability"] == pytest.approx(result.probability, abs=1e-6)
    assert summary["threshold"] == pytest.approx(result.threshold, abs=1e-6)
    assert summary["operating_point"] == result.operating_point
    assert summary["algorithm_name"] == result.model_name
    assert summary["algorithm_version"] == result.model_version
    with node.session_factory() as session:
        evaluated = sorted(
            i.sop_instance_uid for i in session.get(TriageResult, result.id).images if i.evaluated
        )
    assert summary["referenced_sop_instance_uids"] == evaluated


def default_or_tiny(tiny_model: Path) -> Path:
    """The shipped default model when present, else the tiny test model."""
    from models.runtime import default_model_path

    path = default_model_path()
    return path if path.exists() else tiny_model


def test_embedded_mode_real_radiographs_and_wrapped_pngs(
    tmp_path: Path,
    shared_data: Path,
    pacs: Pacs,
    tiny_model: Path,
    labelled_dx,
    nodes,  # type: ignore[no-untyped-def]
) -> None:
    from tests.support.dx import wrap_image_as_dx
    from triage.worker import start_embedded_worker
    from worklist.priority import Priority

    settings = make_node_settings(tmp_path, default_or_tiny(tiny_model), pacs.destination)
    assert settings.uses_embedded_broker
    node = start_scp(settings)
    nodes.append(node)
    embedded = start_embedded_worker(settings, extra_env=FAST_OPTIONS)
    node.workers.extend(embedded.processes.values())

    stat = tmp_path / "stat.dcm"
    wrap_image_as_dx(
        shared_data
        / "cxr-nih64"
        / "normal"
        / min((shared_data / "cxr-nih64" / "normal").iterdir()).name,
        requested_priority="STAT",
    ).save_as(stat, enforce_file_format=True)
    files = [
        shared_data / REAL / "RG1_J2KI.dcm",
        shared_data / REAL / "konica_CR_chest_Monochrome1-Jpeg.dcm",
        *labelled_dx("abnormal", 2),
        *labelled_dx("normal", 2),
        stat,
    ]
    for path in files:
        out = storescu_as_is(settings.dicom_port, path)
        assert out.returncode == 0, out.stderr
    # A study with nothing eligible: the lateral view alone.
    out = storescu_as_is(
        settings.dicom_port, shared_data / REAL / "fujifilm_DX_thorax_lateral_veterinary.dcm"
    )
    assert out.returncode == 0, out.stderr
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files]
    lateral_uid = str(
        pydicom.dcmread(
            shared_data / REAL / "fujifilm_DX_thorax_lateral_veterinary.dcm",
            stop_before_pixels=True,
        ).StudyInstanceUID
    )
    results = wait_for_results(node, [*uids, lateral_uid])
    for uid in uids:
        assert results[uid].status == "triaged"
        check_sr_matches_database(node, pacs, results[uid])
    lateral = results[lateral_uid]
    assert lateral.status == "not_evaluated" and lateral.decision is None
    assert lateral.sr_sop_instance_uid is None
    assert "lateral_view" in lateral.reason
    assert len(pacs.received()) == len(uids)
    stat_uid = str(pydicom.dcmread(stat, stop_before_pixels=True).StudyInstanceUID)
    assert results[stat_uid].priority == Priority.STAT
    with node.session_factory() as session:
        assert session.scalar(select(Study.state).where(Study.study_instance_uid == uids[0])) == (
            "triaged"
        )
    embedded.stop(timeout=30)
    assert not embedded.alive()
    assert all(p.returncode == 0 for p in embedded.processes.values())


@pytest.mark.redis
@pytest.mark.postgres
def test_scaled_out_redis_postgres_separate_worker(
    tmp_path: Path,
    shared_data: Path,
    pacs: Pacs,
    tiny_model: Path,
    postgres_url: str,
    nodes,  # type: ignore[no-untyped-def]
) -> None:
    import redis

    broker = REDIS_URL.rsplit("/", 1)[0] + "/11"
    try:
        client = redis.Redis.from_url(broker)
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not running")
    client.delete("inference", "delivery")
    settings = make_node_settings(
        tmp_path, tiny_model, pacs.destination, database_url=postgres_url, broker_url=broker
    )
    assert not settings.uses_embedded_broker
    node = start_scp(settings)
    nodes.append(node)
    node.workers.append(start_worker_process(settings, "inference"))
    node.workers.append(start_worker_process(settings, "delivery", concurrency=2))
    files = [
        shared_data / REAL / "RG1_J2KI.dcm",
        shared_data / REAL / "canon_DX_chest_966_fixed.dcm",
    ]
    for path in files:
        assert storescu_as_is(settings.dicom_port, path).returncode == 0
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files]
    results = wait_for_results(node, uids)
    for uid in uids:
        check_sr_matches_database(node, pacs, results[uid])


def test_worker_killed_during_inference_triages_once(
    tmp_path: Path,
    shared_data: Path,
    pacs: Pacs,
    slow_model: Path,
    nodes,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_node_settings(tmp_path, slow_model, pacs.destination)
    node = start_scp(settings)
    nodes.append(node)
    node.workers.append(start_worker_process(settings, "inference"))
    node.workers.append(start_worker_process(settings, "delivery"))
    path = shared_data / REAL / "fuji_CR_chest_from_fodicom_withmeta.dcm"
    assert storescu_as_is(settings.dicom_port, path).returncode == 0

    def claim() -> TriageClaim | None:
        with node.session_factory() as session:
            return session.scalar(select(TriageClaim))

    first = wait_until(claim, timeout=60, what="a worker to claim the study")
    # Let it load the model and start inferring, then kill the pool process.
    time.sleep(1.0)
    pid = int(first.claimed_by.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    results = wait_for_results(node, [uid], timeout=120)
    with node.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TriageResult)) == 1
        assert session.scalar(select(TriageClaim.attempts)) >= 2
        (delivery,) = session.scalars(select(Delivery)).all()
        assert delivery.state == "delivered"
    check_sr_matches_database(node, pacs, results[uid])
    assert len(pacs.received()) == 1


def test_destination_down_at_first_gets_the_sr_later(
    tmp_path: Path,
    shared_data: Path,
    tiny_model: Path,
    nodes,  # type: ignore[no-untyped-def]
) -> None:
    pacs = Pacs(tmp_path / "late-pacs")  # not started yet
    settings = make_node_settings(tmp_path, tiny_model, pacs.destination)
    node = start_scp(settings)
    nodes.append(node)
    node.workers.append(start_worker_process(settings, "inference"))
    node.workers.append(start_worker_process(settings, "delivery"))
    path = shared_data / REAL / "fuji_CR_chest_from_fodicom_withmeta.dcm"
    assert storescu_as_is(settings.dicom_port, path).returncode == 0

    def failed_attempts() -> int:
        with node.session_factory() as session:
            row = session.scalar(select(Delivery))
            return row.attempts if row is not None and row.last_error else 0

    wait_until(lambda: failed_attempts() >= 2, timeout=60, what="failed delivery attempts")
    with node.session_factory() as session:
        row = session.scalar(select(Delivery))
        assert row.state in ("pending", "sending") and "association" in row.last_error
    pacs.start()
    try:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        results = wait_for_results(node, [uid], timeout=60)
        check_sr_matches_database(node, pacs, results[uid])
        assert len(pacs.received()) == 1
    finally:
        pacs.stop()


def test_whole_inference_worker_killed_a_new_one_finishes_once(
    tmp_path: Path,
    shared_data: Path,
    pacs: Pacs,
    slow_model: Path,
    nodes,  # type: ignore[no-untyped-def]
) -> None:
    """The worker's main process dies too (no redelivery from the broker): the sweep
    re-sends the stalled revision after the lease, and a new worker triages it once."""
    settings = make_node_settings(tmp_path, slow_model, pacs.destination)
    node = start_scp(settings)
    nodes.append(node)
    lease = {"TRIAGE_LEASE_SECONDS": "4"}
    doomed = start_worker_process(settings, "inference", extra_env=lease)
    node.workers.append(start_worker_process(settings, "delivery", extra_env=lease))
    path = shared_data / REAL / "fuji_CR_chest_from_fodicom_withmeta.dcm"
    assert storescu_as_is(settings.dicom_port, path).returncode == 0

    def claim() -> TriageClaim | None:
        with node.session_factory() as session:
            return session.scalar(select(TriageClaim))

    first = wait_until(claim, timeout=60, what="a worker to claim the study")
    child = int(first.claimed_by.rsplit(":", 1)[1])
    os.kill(doomed.pid, signal.SIGKILL)  # the main process first: nothing to requeue
    os.kill(child, signal.SIGKILL)
    doomed.wait(timeout=10)
    node.workers.append(start_worker_process(settings, "inference", extra_env=lease))
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    results = wait_for_results(node, [uid], timeout=120)
    with node.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TriageResult)) == 1
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1
    check_sr_matches_database(node, pacs, results[uid])
    assert len(pacs.received()) == 1
