"""Issue 13 point 9: ``kill -9`` of ``triage-node serve`` leaves no process behind,
and a node refuses to start on a data directory that another node's processes use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import environment_without_settings, free_port, wait_until
from tests.support.procfs import descendants
from worklist.core.processes import LOCK_FILE

BIN = Path(sys.executable).parent
_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    """Whatever the outcome, SIGKILL every process group a test started."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _serve(tmp_path: Path, data_dir: Path, name: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    dicom_port = free_port()
    env = environment_without_settings()
    env.update(
        TRIAGE_DATA_DIR=str(data_dir),
        TRIAGE_DICOM_PORT=str(dicom_port),
        TRIAGE_HTTP_PORT=str(free_port()),
        TRIAGE_HTTP_HOST="127.0.0.1",
        TRIAGE_DICOM_HOST="127.0.0.1",
    )
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "triage-node"), "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed after the test
        )
    _STARTED.append(proc)
    return proc, dicom_port, log


def _echo(port: int) -> bool:
    out = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "TRIAGE", "-to", "2", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return out.returncode == 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _workers(pid: int) -> list[int]:
    found = []
    for child in descendants(pid)[1:]:
        try:
            if b"triage.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def test_kill_9_of_serve_leaves_no_worker_and_a_second_node_is_refused(tmp_path: Path) -> None:
    if not Path("/usr/bin/echoscu").exists():
        pytest.skip("dcmtk echoscu needed")
    data_dir = tmp_path / "data"
    first, port, log = _serve(tmp_path, data_dir, "first")
    try:
        wait_until(
            lambda: first.poll() is not None or (_echo(port) and len(_workers(first.pid)) >= 2),
            timeout=90,
            what="serve with its two workers",
        )
        assert first.poll() is None, log.read_text()[-3000:]
        family = descendants(first.pid)
        workers = _workers(first.pid)

        # A second node on the same data directory is refused, with the reason.
        second, _, second_log = _serve(tmp_path, data_dir, "second")
        assert second.wait(timeout=60) == 2, second_log.read_text()[-3000:]
        assert "is in use by another node" in second_log.read_text()

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        wait_until(
            lambda: not any(_alive(pid) for pid in family),
            timeout=15,
            what=f"every process of the killed node to die (workers {workers})",
        )
        print(f"{len(family)} processes of the killed node gone after "
              f"{time.monotonic() - killed_at:.1f} s")  # fmt: skip

        # Nothing left: a new node starts on the same data directory.
        third, port3, log3 = _serve(tmp_path, data_dir, "third")
        try:
            wait_until(
                lambda: third.poll() is not None or _echo(port3),
                timeout=90,
                what="the restarted node",
            )
            assert third.poll() is None, log3.read_text()[-3000:]
        finally:
            third.send_signal(signal.SIGTERM)
            assert third.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_node_refuses_while_a_left_over_process_holds_its_data_directory(
    tmp_path: Path,
) -> None:
    """A process that inherited the data directory's lock (as a node's workers do)
    still runs: ``serve`` exits 2 and names the pids the lock file records."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / LOCK_FILE).write_text("4242\n4243\n")
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        node, _, log = _serve(tmp_path, data_dir, "refused")
        assert node.wait(timeout=60) == 2
        text = log.read_text()
        assert "is in use by another node or by processes left over" in text
        assert "4242 4243" in text
    finally:
        os.close(fd)
