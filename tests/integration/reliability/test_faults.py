"""Faults, with the node as separate processes (``triage-node scp`` and ``worker``):
Redis restarted with studies queued, PostgreSQL restarted, the SCP killed during an
association, the destination PACS down for a while, a worker killed during
inference. After each, every acknowledged instance ends in exactly one triage result
(per study revision) and exactly one delivered SR (counted at a storescp ``+uf``).

Redis and PostgreSQL are private servers of the test on free ports (never the
machine's shared ones)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, text

from tests.conftest import spool_files, wait_until
from tests.integration.reliability.helpers import (
    assert_no_phi,
    make_studies,
    send,
    wait_exactly_once,
)
from worklist.core.db import make_engine
from worklist.tables import Instance, Study, TriageClaim

pytestmark = [pytest.mark.postgres]


def _study_rows(url: str) -> list[tuple[str, int, str, bool]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    Study.study_instance_uid,
                    Study.revision,
                    Study.state,
                    Study.dispatched_at.is_not(None),
                )
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def _llen(redis_server, queue: str = "inference") -> int:  # type: ignore[no-untyped-def]
    try:
        return int(redis_server.client().llen(queue))
    except Exception:  # noqa: BLE001 - Redis down: nothing queued
        return 0


def test_redis_restarted_while_studies_are_queued(
    tmp_path: Path, shared_data: Path, postgres_url: str, private_redis, make_cluster
) -> None:
    """Studies sit in Redis (no inference worker yet) when Redis restarts without
    persistence: every message is gone. One more study arrives while Redis is down
    (stored; its enqueue fails and is retried). The sweep finds the revisions
    enqueued but never claimed after the lease and re-enqueues them (one study a task:
    a batch would claim the waiting revisions with the late study's task first)."""
    studies = make_studies(shared_data, tmp_path / "send", 4, 2)
    cluster = make_cluster(postgres_url, private_redis.url, inference_batch_studies=1)
    cluster.start_worker("delivery", concurrency=2)  # runs the sweep
    cluster.start_scp()
    first, late = studies[:3], studies[3]
    assert send(cluster.dicom_port, [f for s in first for f in s.files]).returncode == 0

    def queued_in_redis() -> bool:
        rows = _study_rows(postgres_url)
        return (
            len(rows) == 3
            and all(state == "queued" and dispatched for _, _, state, dispatched in rows)
            and _llen(private_redis) == 3
        )

    wait_until(queued_in_redis, timeout=30, what="three studies enqueued in Redis")

    private_redis.kill()
    down_at = time.monotonic()
    out = send(cluster.dicom_port, list(late.files))
    assert out.returncode == 0, out.stderr  # ingest does not need the broker
    wait_until(
        lambda: any(uid == late.study_uid and state == "queued"
                    for uid, _, state, _ in _study_rows(postgres_url)),
        timeout=30,
        what="the late study stable while Redis is down",
    )  # fmt: skip
    private_redis.start()
    assert _llen(private_redis) <= 1  # the three earlier messages are lost
    cluster.start_worker("inference")
    outcome = wait_exactly_once(postgres_url, cluster.pacs, studies, timeout=120, started=down_at)
    assert all(revs == [1] for revs in outcome.revisions.values())
    logs = cluster.procs["delivery"].log()
    assert "stalled; sending it to triage again" in logs
    assert_no_phi(cluster.all_logs())
    print(
        f"\nredis restart: all {len(studies)} studies triaged and delivered "
        f"{outcome.seconds:.1f} s after Redis went down "
        f"(lease {cluster.env()['TRIAGE_LEASE_SECONDS']} s)"
    )


def test_postgres_restarted(
    tmp_path: Path, shared_data: Path, private_postgres, private_redis, make_cluster
) -> None:
    """PostgreSQL stops (immediate, like a crash) and comes back on the same port.
    During the outage a C-STORE is refused with 0xA700 (nothing spooled); a study
    acknowledged just before the outage, not yet stable, and the refused study
    re-sent after it, are both triaged and delivered once; nothing earlier is lost
    or redone."""
    url = private_postgres.url
    before, pending, during = make_studies(shared_data, tmp_path / "send", 3, 2)
    cluster = make_cluster(url, private_redis.url, stable_seconds=3)
    cluster.start_worker("inference")
    cluster.start_worker("delivery", concurrency=2)
    cluster.start_scp()
    assert send(cluster.dicom_port, list(before.files)).returncode == 0
    wait_exactly_once(url, cluster.pacs, [before], timeout=60)

    assert send(cluster.dicom_port, list(pending.files)).returncode == 0
    private_postgres.stop("immediate")
    stopped_at = time.monotonic()
    out = send(cluster.dicom_port, list(during.files), "-v")
    assert out.returncode != 0
    assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stderr[-1500:]
    uids = set(during.sop_uids)
    spooled = {p.stem for p in spool_files(cluster.spool)}
    assert not uids & spooled, "a refused instance was left in the spool"
    assert not [p for p in cluster.spool.rglob("*.partial")]
    # Down for longer than the quiet period (the pending study comes due during the
    # outage): until the watcher (in the SCP) failed 20 rounds (0.2 s apart) and the
    # sweep (in the delivery worker) failed too.
    wait_until(
        lambda: (
            cluster.procs["scp"].log().count("stability round failed") >= 20
            and "sweep failed" in cluster.procs["delivery"].log()
        ),
        timeout=60,
        what="the watcher and the sweep to fail during the outage",
    )
    again = send(cluster.dicom_port, list(during.files), "-v")
    assert "Refused: OutOfResources" in again.stderr, again.stderr[-1500:]
    private_postgres.start()
    restarted_at = time.monotonic()

    def resend() -> bool:
        return send(cluster.dicom_port, list(during.files)).returncode == 0

    wait_until(resend, timeout=60, interval=0.5, what="a C-STORE to succeed after the restart")
    store_recovery = time.monotonic() - restarted_at
    outcome = wait_exactly_once(
        url, cluster.pacs, [before, pending, during], timeout=120, started=restarted_at
    )
    assert all(revs == [1] for revs in outcome.revisions.values())
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Instance)) == 6
            assert conn.scalar(select(func.max(TriageClaim.attempts))) >= 1
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    for proc in cluster.procs.values():
        assert proc.running(), f"{proc.name} died during the outage:\n{proc.tail()}"
    assert_no_phi(cluster.all_logs())
    print(
        f"\npostgres restart: down {restarted_at - stopped_at:.1f} s; C-STORE accepted "
        f"{store_recovery:.1f} s after the restart; all studies triaged and delivered "
        f"{outcome.seconds:.1f} s after the restart"
    )


def _row_files(url: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(Instance.sop_instance_uid, Instance.file_path)).all())
    finally:
        engine.dispose()


def test_scp_killed_during_an_association(
    tmp_path: Path, shared_data: Path, postgres_url: str, private_redis, make_cluster
) -> None:
    """SIGKILL of ``triage-node scp`` while storescu is sending a 60-instance study:
    after the restart no partial file is in the spool, every row points to a whole
    file identical to the one sent, and the sender's retry (all files again)
    succeeds; the study is triaged and delivered once per revision."""
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 60, size=440)
    cluster = make_cluster(postgres_url, private_redis.url, stable_seconds=3)
    cluster.start_worker("inference")
    cluster.start_worker("delivery", concurrency=2)
    scp = cluster.start_scp()

    import subprocess

    sender = subprocess.Popen(
        ["storescu", "-aet", "MODALITY", "-aec", "TRIAGE", "-to", "20", "-xe", "127.0.0.1",
         str(cluster.dicom_port), *map(str, study.files)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: len(_row_files(postgres_url)) >= 5, timeout=60, what="5 instances stored")
    os.killpg(scp.pid, signal.SIGKILL)
    scp.process.wait(timeout=10)  # type: ignore[union-attr]
    sender.communicate(timeout=60)
    assert sender.returncode != 0, "the sender saw the association fail"
    stored_before = _row_files(postgres_url)
    assert 5 <= len(stored_before) < len(study.files)

    cluster.start_scp()
    assert not list(cluster.spool.rglob("*.partial")), "partial file left after the restart"
    sent = dict(zip(study.sop_uids, study.files, strict=True))

    def whole(path: Path, uid: str) -> bool:
        """The stored dataset equals the one sent (the File Meta is the SCP's own)."""
        stored = pydicom.dcmread(path)
        return stored == pydicom.dcmread(sent[uid]) and stored.pixel_array.size > 0

    for uid, path in _row_files(postgres_url).items():
        assert whole(Path(path), uid), f"row {uid} points to a bad file"
    for path in cluster.spool.rglob("*.dcm"):  # a file without a row must be whole too
        assert whole(path, path.stem), f"{path.name} is not whole"

    out = send(cluster.dicom_port, list(study.files))
    assert out.returncode == 0, out.stderr[-1500:]
    assert len(_row_files(postgres_url)) == len(study.files)
    outcome = wait_exactly_once(postgres_url, cluster.pacs, [study], timeout=120)
    assert_no_phi(cluster.all_logs())
    print(
        f"\nscp killed after {len(stored_before)} of {len(study.files)} instances; "
        f"revisions triaged: {outcome.revisions[study.study_uid]}"
    )


def test_pacs_down_for_a_while(
    tmp_path: Path, shared_data: Path, postgres_url: str, private_redis, make_cluster
) -> None:
    """The PACS is down while three studies are triaged; their deliveries fail and
    back off; once it is up again each SR arrives exactly once."""
    studies = make_studies(shared_data, tmp_path / "send", 3, 2)
    cluster = make_cluster(postgres_url, private_redis.url)
    cluster.start_worker("inference")
    cluster.start_worker("delivery", concurrency=2)
    cluster.start_scp()
    cluster.pacs.stop()
    assert send(cluster.dicom_port, [f for s in studies for f in s.files]).returncode == 0
    from worklist.tables import Delivery

    def failed_attempts() -> bool:
        engine = make_engine(postgres_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(Delivery.attempts, Delivery.last_error)).all()
        finally:
            engine.dispose()
        return len(rows) == 3 and all(a >= 2 and e for a, e in rows)

    wait_until(failed_attempts, timeout=60, what="two failed attempts per delivery")
    cluster.pacs.start()
    up_at = time.monotonic()
    outcome = wait_exactly_once(postgres_url, cluster.pacs, studies, timeout=60, started=up_at)
    assert_no_phi(cluster.all_logs())
    print(f"\npacs back: all SRs delivered {outcome.seconds:.1f} s later")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier whose inference takes seconds (as in the triage e2e tests)."""
    from tests.support.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("slow") / "slow.onnx"
    build_tiny_model(path, input_size=512, slow_matmuls=1500, name="slow-test-model")
    return path


def test_inference_worker_killed_during_inference(
    tmp_path: Path,
    shared_data: Path,
    postgres_url: str,
    private_redis,
    make_cluster,
    slow_model: Path,
) -> None:
    """SIGKILL of the pool process that is running the model: the message is
    redelivered (reject on worker lost) and the study is triaged and delivered once."""
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1)
    cluster = make_cluster(postgres_url, private_redis.url)
    cluster.model = slow_model
    cluster.start_worker("inference")
    cluster.start_worker("delivery")
    cluster.start_scp()
    assert send(cluster.dicom_port, list(study.files)).returncode == 0

    def claim() -> str | None:
        engine = make_engine(postgres_url)
        try:
            with engine.connect() as conn:
                return conn.scalar(select(TriageClaim.claimed_by))
        finally:
            engine.dispose()

    pid = int(wait_until(claim, timeout=60, what="a claim").rsplit(":", 1)[1])
    busy_from = _cpu_seconds(pid)
    wait_until(
        lambda: _cpu_seconds(pid) - busy_from > 0.5, timeout=30, what="the model to be running"
    )
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    outcome = wait_exactly_once(postgres_url, cluster.pacs, [study], timeout=120, started=killed_at)
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(TriageClaim.attempts)) >= 2
    finally:
        engine.dispose()
    assert_no_phi(cluster.all_logs())
    print(f"\nworker killed: SR delivered {outcome.seconds:.1f} s later")
