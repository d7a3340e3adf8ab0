"""The real triage queue (Celery by task name, embedded and Redis brokers) and
``run_scp`` as the CLI runs it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import select

from dicom_scp.queue import CeleryTriageQueue
from dicom_scp.server import run_scp
from tests.conftest import REDIS_URL, environment_without_settings, free_port, wait_until
from tests.integration.scp.helpers import (
    count_instances,
    need_dcmtk,
    pyscu_echo,
    storescu_as_is,
)
from worklist.core.contracts import INFERENCE_QUEUE, TASK_TRIAGE
from worklist.core.settings import load_settings
from worklist.tables import Study


def _receive_one(broker_url: str, queue_name: str, timeout: float = 20.0) -> Any:
    """Take one message off ``queue_name``; returns the kombu message."""
    with Connection(broker_url) as conn:
        queue = conn.SimpleQueue(queue_name)
        try:
            message = queue.get(block=True, timeout=timeout)
            message.ack()
            return message
        finally:
            queue.close()


def _assert_triage_message(message: Any, study_id: int, revision: int) -> None:
    assert message.headers["task"] == TASK_TRIAGE
    args, kwargs, _embed = message.decode()
    assert list(args) == [study_id, revision] and kwargs == {}


def test_celery_queue_with_the_embedded_broker(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_url="")
    assert settings.uses_embedded_broker
    queue = CeleryTriageQueue(settings)
    try:
        queue.enqueue(7, 2)
    finally:
        queue.close()
    _assert_triage_message(_receive_one(settings.effective_broker_url, INFERENCE_QUEUE), 7, 2)


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def test_celery_queue_with_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _redis_up():
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    # A private queue name, so that no worker of a parallel test run takes the message.
    private = f"inference-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("dicom_scp.queue.INFERENCE_QUEUE", private)
    settings = load_settings(broker_url=REDIS_URL)
    queue = CeleryTriageQueue(settings)
    try:
        with Connection(REDIS_URL) as conn:  # declare it before sending
            Queue(private, Exchange(private), routing_key=private)(conn.channel()).declare()
        queue.enqueue(11, 1)
    finally:
        queue.close()
    message = _receive_one(REDIS_URL, private)
    _assert_triage_message(message, 11, 1)
    with Connection(REDIS_URL) as conn:
        Queue(private)(conn.channel()).delete()


def test_run_scp_serves_until_stopped(
    shared_data: Path, migrated_url: str, session_factory: Any, tmp_path: Path
) -> None:
    need_dcmtk()
    port = free_port()
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url=migrated_url,
        dicom_host="127.0.0.1",
        dicom_port=port,
        min_free_mb=0,
    )
    stale = settings.spool_dir / "1.2" / "1.2.3" / ".1.2.3.4.dead.partial"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half-written before a crash")
    stop = threading.Event()
    thread = threading.Thread(target=run_scp, args=(settings,), kwargs={"stop": stop})
    thread.start()
    try:
        wait_until(lambda: pyscu_echo(port) == 0x0000, timeout=30, what="SCP up")
        assert not stale.exists()
        path = shared_data / "dicom" / "real" / "konica_CR_chest_Monochrome1-Jpeg.dcm"
        assert storescu_as_is(port, path).returncode == 0
        assert count_instances(session_factory) == 1
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert pyscu_echo(port) is None  # no longer serving


def test_cli_scp_process_stores_hands_off_and_stops_on_sigterm(
    shared_data: Path, migrated_url: str, session_factory: Any, tmp_path: Path
) -> None:
    """``triage-node scp`` as a process: store, hand the stable study to the embedded
    broker by task name, exit 0 on SIGTERM."""
    need_dcmtk()
    cli = Path(sys.executable).parent / "triage-node"
    if not cli.exists():
        pytest.skip("triage-node entry point not installed")
    port = free_port()
    data_dir = tmp_path / "data"
    env = environment_without_settings()
    env.update(
        TRIAGE_DATA_DIR=str(data_dir),
        TRIAGE_DATABASE_URL=migrated_url,
        TRIAGE_DICOM_HOST="127.0.0.1",
        TRIAGE_DICOM_PORT=str(port),
        TRIAGE_MIN_FREE_MB="0",
        TRIAGE_STABLE_SECONDS="0.5",
        TRIAGE_STABILITY_POLL_SECONDS="0.1",
    )
    proc = subprocess.Popen(
        [str(cli), "scp"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: pyscu_echo(port) == 0x0000, timeout=60, what="triage-node scp up")
        path = shared_data / "dicom" / "real" / "konica_CR_chest_Monochrome1-Jpeg.dcm"
        assert storescu_as_is(port, path).returncode == 0
        assert count_instances(session_factory) == 1

        def dispatched() -> bool:
            with session_factory() as session:
                return session.scalars(select(Study.dispatched_at)).one() is not None

        wait_until(dispatched, timeout=30, what="hand-off to the broker")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output[-3000:]
    with session_factory() as session:
        study_id = session.scalars(select(Study.id)).one()
    broker = load_settings(data_dir=data_dir).effective_broker_url
    _assert_triage_message(_receive_one(broker, INFERENCE_QUEUE), study_id, 1)
