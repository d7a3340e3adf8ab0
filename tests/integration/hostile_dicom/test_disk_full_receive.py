"""Issue 13 point 10: the disk fills while a dataset arrives.

The node's data directory is a small tmpfs (``mount`` needs root: skipped
otherwise), nearly filled; the free-space watermark is off so that the write
itself hits ENOSPC in the middle of the dataset. The partial file is removed at
once (not at the next sweep), the sender gets 0xA700 on the same association, and
once space is back the same node stores the instance.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_scp.sink import incoming_dir
from tests.conftest import spool_files
from tests.integration.reliability.helpers import make_studies

FS_MB = 24
STORESCU = "/usr/bin/storescu"


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "node"  # the scp_node fixture's data directory
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mount -t tmpfs not permitted here (not root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(fs: Path, leave: int) -> Path:
    ballast = fs / "ballast"
    need = shutil.disk_usage(fs).free - leave
    with open(ballast, "wb") as fh:
        while need > 0:
            need -= fh.write(bytes(min(1 << 20, need)))
    return ballast


def _store(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [STORESCU, "-v", "-xe", "-aet", "MODALITY", "-aec", "TRIAGE", "-to", "20"]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_disk_full_mid_receive_removes_the_partial_file_and_answers_a700(
    tmp_path: Path, shared_data: Path, small_data_dir: Path, scp_node: Any
) -> None:
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1, size=4000)
    size = study.files[0].stat().st_size
    node = scp_node()  # the free-space watermark is off (TRIAGE_MIN_FREE_MB=0)
    spool = node.data_dir / "spool"
    ballast = _fill(small_data_dir, size // 3)

    out = _store(node.port, study.files[0])
    checked = time.monotonic()
    assert "Refused: OutOfResources" in out.stderr, out.stderr[-2000:]
    assert "Association Aborted" not in out.stderr, "the association was aborted"
    left = [p for p in incoming_dir(spool).iterdir()] if incoming_dir(spool).is_dir() else []
    assert left == [], f"partial receive left behind: {[(p.name, p.stat().st_size) for p in left]}"
    assert time.monotonic() - checked < 1
    assert spool_files(spool) == []
    assert "partial file removed" in node.log()

    ballast.unlink()
    again = _store(node.port, study.files[0])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Received Store Response (Success)" in again.stderr
    assert len(spool_files(spool)) == 1
