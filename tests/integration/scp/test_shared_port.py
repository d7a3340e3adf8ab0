"""``triage-node scp`` with several processes accepting on one DICOM port.

The extra processes receive like the main one, record each instance once, die with
the main process, are started again when one dies, and a second node cannot bind
the same port by accident.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_scp.ae import PortInUseError
from tests.conftest import environment_without_settings, free_port, wait_until
from tests.integration.scp.helpers import count_instances, need_dcmtk, pyscu_echo, storescu_as_is
from tests.support.procfs import descendants

SOURCE = Path("dicom") / "real" / "konica_CR_chest_Monochrome1-Jpeg.dcm"


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _cli() -> Path:
    cli = Path(sys.executable).parent / "triage-node"
    if not cli.exists():
        pytest.skip("triage-node entry point not installed")
    return cli


def _start(tmp_path: Path, migrated_url: str, port: int, name: str, **extra: str) -> NodeProcess:
    env = environment_without_settings()
    env.update(
        TRIAGE_DATA_DIR=str(tmp_path / f"data-{name}"),
        TRIAGE_DATABASE_URL=migrated_url,
        TRIAGE_DICOM_HOST="127.0.0.1",
        TRIAGE_DICOM_PORT=str(port),
        TRIAGE_MIN_FREE_MB="0",
        TRIAGE_STABLE_SECONDS="86400",
        TRIAGE_SCP_PROCESSES="2",
        **extra,
    )
    log = tmp_path / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(_cli()), "scp"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    return NodeProcess(proc, port, log)


def _descendants(pid: int) -> list[int]:
    """Live descendants of ``pid``."""
    return descendants(pid)[1:]


def _listeners(pid: int) -> list[int]:
    """The node's extra SCP processes (not multiprocessing's resource tracker)."""
    found = []
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop(node: NodeProcess) -> None:
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


@contextlib.contextmanager
def _running(tmp_path: Path, migrated_url: str, **extra: str) -> Iterator[NodeProcess]:
    need_dcmtk()
    started = _start(tmp_path, migrated_url, free_port(), "node", **extra)
    try:
        wait_until(
            lambda: "DICOM SCP TRIAGE listening" in started.output(),
            timeout=60,
            what="triage-node scp up",
        )
        wait_until(
            lambda: "DICOM port shared by 2 SCP processes" in started.output(),
            timeout=60,
            what="the second SCP process to listen",
        )
        yield started
    finally:
        _stop(started)


@pytest.fixture
def node(tmp_path: Path, migrated_url: str) -> Iterator[NodeProcess]:
    with _running(tmp_path, migrated_url) as started:
        yield started


def _copies(shared_data: Path, out: Path, count: int) -> list[Path]:
    """``count`` copies of a real chest CR, each its own study and instance."""
    out.mkdir()
    paths = []
    for i in range(count):
        ds = pydicom.dcmread(shared_data / SOURCE)
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{i:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _store_concurrently(port: int, files: list[Path], **kwargs: Any) -> None:
    """One storescu association per file, 8 at a time (each of the 2 processes
    takes up to 16 / 2 associations)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda path: storescu_as_is(port, path, **kwargs), files))
    assert [r.returncode for r in results] == [0] * len(files), [r.stderr for r in results]


def _stores_by_process(node: NodeProcess) -> tuple[int, int]:
    """New instances stored by (all processes, the extra process)."""
    lines = [line for line in node.output().splitlines() if "stored new instance" in line]
    return len(lines), sum(1 for line in lines if " INFO scp-1 " in line)


def test_both_processes_receive_and_record_each_instance_once(
    node: NodeProcess, shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    files = _copies(shared_data, tmp_path / "copies", 16)
    _store_concurrently(node.port, files)
    assert count_instances(session_factory) == 16
    # The same files again, one association: still one row each.
    assert all(storescu_as_is(node.port, path).returncode == 0 for path in files[:4])
    assert count_instances(session_factory) == 16

    stored, by_extra = _stores_by_process(node)
    assert stored == 16
    assert 0 < by_extra < 16, node.output()[-3000:]

    _stop(node)
    assert node.proc.returncode == 0, node.output()[-3000:]
    assert _descendants(node.proc.pid) == []
    assert _port_free(node.port)


def test_killed_node_leaves_no_listener_on_its_port(node: NodeProcess) -> None:
    listeners = _listeners(node.proc.pid)
    node.proc.kill()
    node.proc.wait()
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in listeners),
        timeout=10,
        what="the extra SCP process to die with the node",
    )
    assert _port_free(node.port)


def test_a_listener_that_dies_is_started_again(node: NodeProcess) -> None:
    (first,) = _listeners(node.proc.pid)
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: [pid for pid in _listeners(node.proc.pid) if pid != first] != [],
        timeout=30,
        what="a new SCP process",
    )
    assert "SCP process scp-1 exited with -9: starting it again" in node.output()
    for _ in range(8):
        assert pyscu_echo(node.port) == 0x0000


def test_a_second_node_on_the_same_port_is_refused(
    node: NodeProcess, tmp_path: Path, migrated_url: str
) -> None:
    second = _start(tmp_path, migrated_url, node.port, "second")
    try:
        assert second.proc.wait(timeout=60) == 2
    finally:
        _stop(second)
    assert "is already in use by another program" in second.output()
    assert _listeners(second.proc.pid) == []
    # The first node goes on serving alone.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert pyscu_echo(node.port) == 0x0000


def test_tls_on_every_process(
    tmp_path: Path, migrated_url: str, shared_data: Path, session_factory: Any
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "2", "-subj", "/CN=node", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    tls = {"TRIAGE_TLS_CERT": str(cert), "TRIAGE_TLS_KEY": str(key)}
    with _running(tmp_path, migrated_url, **tls) as node:
        files = _copies(shared_data, tmp_path / "copies", 16)
        _store_concurrently(node.port, files, tls=["+tla", "+cf", cert])
        assert count_instances(session_factory) == 16
        stored, by_extra = _stores_by_process(node)
        assert stored == 16
        assert 0 < by_extra < 16, node.output()[-3000:]
        assert storescu_as_is(node.port, files[0]).returncode != 0  # no TLS: refused


def test_a_port_in_use_is_a_clear_error_with_one_process_too(
    make_settings: Any, start_node: Any
) -> None:
    settings = make_settings()
    start_node(settings)
    with pytest.raises(PortInUseError, match=f":{settings.dicom_port} is already in use"):
        start_node(settings)
    assert pyscu_echo(settings.dicom_port) == 0x0000  # the first one goes on serving
