"""``triage-node serve`` from a clean data directory: the embedded default works."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import environment_without_settings, free_port, wait_until
from tests.integration.scp.helpers import STORESCU_TS_OPTION, transfer_syntax_of

BIN = Path(sys.executable).parent


def _echo(port: int) -> bool:
    result = subprocess.run(
        ["echoscu", "-aec", "TRIAGE", "127.0.0.1", str(port)], capture_output=True, timeout=30
    )
    return result.returncode == 0


def _http_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.fixture
def node(tmp_path: Path):
    """A `triage-node serve` process with no configuration but ports and data dir."""
    dicom_port, http_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = environment_without_settings()
    env.update(
        TRIAGE_DATA_DIR=str(data_dir),
        TRIAGE_DICOM_PORT=str(dicom_port),
        TRIAGE_HTTP_PORT=str(http_port),
        TRIAGE_HTTP_HOST="127.0.0.1",
        TRIAGE_DICOM_HOST="127.0.0.1",
    )
    log = (tmp_path / "node.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "triage-node"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or _echo(dicom_port),
            timeout=60,
            what="the node to answer C-ECHO",
        )
        assert proc.poll() is None, (tmp_path / "node.log").read_text()
        yield proc, dicom_port, http_port, data_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_serve_accepts_echo_and_store(node, shared_data: Path) -> None:
    proc, dicom_port, http_port, data_dir = node
    chest = shared_data / "dicom" / "real" / "RG1_J2KI.dcm"
    sent = subprocess.run(
        [
            "storescu",
            STORESCU_TS_OPTION[transfer_syntax_of(chest)],
            "-aec",
            "TRIAGE",
            "127.0.0.1",
            str(dicom_port),
            str(chest),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    # HTTP comes up after the DICOM port, once every SCP process listens.
    wait_until(
        lambda: _http_json(f"http://127.0.0.1:{http_port}/healthz") == {"status": "ok"},
        timeout=30,
        what="/healthz",
    )

    import pydicom

    sop_uid = pydicom.dcmread(chest, stop_before_pixels=True).SOPInstanceUID
    db = sqlite3.connect(data_dir / "triage.db")
    rows = db.execute(
        "SELECT file_path FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
    ).fetchall()
    db.close()
    assert len(rows) == 1
    assert Path(rows[0][0]).is_file()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
