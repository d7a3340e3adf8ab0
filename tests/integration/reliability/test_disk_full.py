"""Disk full, on a real small file system: a tmpfs mounted under the test's directory
(``mount -t tmpfs`` needs root; without it the first test skips and the second,
which emulates the free space with the sink's ``free_bytes`` seam, still runs).

- The SCP refuses C-STORE (0xA700 Out of Resources) once the spool's free space is
  below ``TRIAGE_MIN_FREE_MB``, before the disk is actually full, leaves no file,
  and accepts again by itself when space is freed; every acknowledged instance
  then ends in exactly one result and one delivered SR.
- When the disk really is full (the watermark told nothing), the write fails with
  ENOSPC: 0xA700, no partial file, no row.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from dicom_scp.sink import TEMP_SUFFIX, SpoolSink
from dicom_scp.status import StoreStatus
from tests.conftest import free_port, spool_files, wait_until
from tests.integration.reliability.helpers import make_studies, send, wait_exactly_once
from tests.integration.scp.helpers import received_instance
from worklist.tables import Instance

pytestmark = [pytest.mark.postgres]

FS_MB = 24
WATERMARK_MB = 8


def _mount_tmpfs(where: Path, size_mb: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return out.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A ``FS_MB`` MB tmpfs at ``tmp_path/node`` (the node's data directory)."""
    where = tmp_path / "node"
    if shutil.which("mount") is None or not _mount_tmpfs(where, FS_MB):
        pytest.skip("mount -t tmpfs not permitted here (not root); see the emulated test")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill_to(fs: Path, free_bytes: int) -> Path:
    """Write a ballast file so that ``fs`` has about ``free_bytes`` left."""
    ballast = fs / f"ballast-{time.monotonic_ns()}"
    need = shutil.disk_usage(fs).free - free_bytes
    with open(ballast, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while need > 0:
            try:
                need -= fh.write(chunk[: min(len(chunk), need)])
            except OSError:
                break
    return ballast


def _spooled(spool: Path) -> list[Path]:
    return spool_files(spool)


def test_watermark_refuses_before_full_and_resumes_by_itself(
    tmp_path: Path,
    shared_data: Path,
    postgres_url: str,
    private_redis: Any,
    make_cluster: Any,
    small_fs: Path,
) -> None:
    first, refused = make_studies(shared_data, tmp_path / "send", 2, 2)
    # One SCP process: each process keeps its own watermark state, and the log
    # lines checked below come from the one that refused.
    cluster = make_cluster(
        postgres_url, private_redis.url, min_free_mb=WATERMARK_MB, scp_processes=1
    )
    assert cluster.data_dir == small_fs
    cluster.start_worker("inference")
    cluster.start_worker("delivery", concurrency=2)
    cluster.start_scp()
    assert send(cluster.dicom_port, list(first.files)).returncode == 0

    ballast = _fill_to(small_fs, (WATERMARK_MB - 2) * 1024 * 1024)  # below the mark
    assert shutil.disk_usage(small_fs).free > 4 * 1024 * 1024  # ... but far from full
    before = set(_spooled(cluster.spool))
    out = send(cluster.dicom_port, list(refused.files), "-v")
    assert out.returncode != 0
    assert "Refused: OutOfResources" in out.stderr, out.stderr[-1500:]
    assert set(_spooled(cluster.spool)) == before, "a refused instance left a file"
    assert "below the" in cluster.procs["scp"].log()

    ballast.unlink()  # space comes back; no restart, no operator
    freed_at = time.monotonic()
    out = send(cluster.dicom_port, list(refused.files))
    assert out.returncode == 0, out.stderr[-1500:]
    assert "free space again" in cluster.procs["scp"].log()
    assert not list(cluster.spool.rglob(f"*{TEMP_SUFFIX}"))
    outcome = wait_exactly_once(
        postgres_url, cluster.pacs, [first, refused], timeout=90, started=freed_at
    )
    assert all(revs == [1] for revs in outcome.revisions.values())


def test_disk_really_full_write_fails_cleanly(
    tmp_path: Path, shared_data: Path, small_fs: Path, session_factory: Any
) -> None:
    """No watermark (free space misreported as plenty): the write itself hits ENOSPC."""
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1, size=440)
    spool = small_fs / "spool"
    sink = SpoolSink(spool, session_factory, 0, free_bytes=lambda _p: 1 << 50)
    ballast = _fill_to(small_fs, 64 * 1024)  # less than one instance
    result = sink.store(received_instance(study.files[0], "MODALITY"))
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert "spool write failed" in (result.comment or "")
    assert _spooled(spool) == []
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    ballast.unlink()
    assert sink.store(received_instance(study.files[0], "MODALITY")).ok


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_watermark_emulated_over_the_network(
    tmp_path: Path, shared_data: Path, session_factory: Any
) -> None:
    """Without mount privileges: the same refuse-then-resume over DICOM, the free
    space coming from the sink's ``free_bytes`` seam."""
    from dicom_scp.ae import start_scp
    from worklist.core.settings import load_settings

    (study,) = make_studies(shared_data, tmp_path / "send", 1, 2)
    settings = load_settings(
        data_dir=tmp_path / "data", dicom_host="127.0.0.1", dicom_port=free_port(), min_free_mb=100
    )
    settings.spool_dir.mkdir(parents=True)  # as start_node_scp does
    free = {"bytes": 50 * 1024 * 1024}
    sink = SpoolSink(settings.spool_dir, session_factory, 100, free_bytes=lambda _p: free["bytes"])
    server = start_scp(settings, sink)
    assert server is not None
    try:
        out = send(settings.dicom_port, list(study.files), "-v")
        assert "Refused: OutOfResources" in out.stderr
        assert _spooled(settings.spool_dir) == []
        free["bytes"] = 10 * 1024**3
        out = send(settings.dicom_port, list(study.files))
        assert out.returncode == 0, out.stderr[-1500:]
        wait_until(lambda: len(_spooled(settings.spool_dir)) == 2, timeout=10, what="2 files")
    finally:
        server.shutdown()


def test_results_disk_full_while_triaging_waits_then_delivers(
    tmp_path: Path,
    shared_data: Path,
    postgres_url: str,
    private_redis: Any,
    make_cluster: Any,
    small_fs: Path,
) -> None:
    """The worker cannot write the SR (results directory on a full disk) for longer
    than several leases: the revision is retried, not given up as ``failed``; once
    space is freed, it is triaged and delivered exactly once."""
    import re

    from sqlalchemy import create_engine

    from triage.pipeline import MAX_ATTEMPTS
    from worklist.tables import TriageClaim, TriageResult

    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1)
    cluster = make_cluster(postgres_url, private_redis.url, lease_seconds=2)
    cluster.start_worker("delivery")
    cluster.start_scp()
    assert send(cluster.dicom_port, list(study.files)).returncode == 0
    ballast = _fill_to(small_fs, 0)
    worker = cluster.start_worker("inference")
    engine = create_engine(postgres_url)
    try:

        def claims() -> int:
            with engine.connect() as conn:
                return int(conn.scalar(select(func.max(TriageClaim.attempts))) or 0)

        # Several failed attempts, more leases than MAX_ATTEMPTS would allow.
        received = re.compile(r"Task triage\.triage_study\[[^\]]+\] received")
        wait_until(
            lambda: len(received.findall(worker.log())) > MAX_ATTEMPTS + 1,
            timeout=90,
            what=f"more than {MAX_ATTEMPTS + 1} triage attempts on a full disk",
        )
        assert "No space left on device" in worker.log()
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(TriageResult)) == 0
        ballast.unlink()
        freed_at = time.monotonic()
        outcome = wait_exactly_once(
            postgres_url, cluster.pacs, [study], timeout=90, started=freed_at
        )
        assert outcome.revisions[study.study_uid] == [1]
        assert claims() <= 2, "disk-full retries must not count as lost attempts"
    finally:
        engine.dispose()
    assert not list((small_fs / "results").glob("*.tmp")), "a partial SR was left behind"
