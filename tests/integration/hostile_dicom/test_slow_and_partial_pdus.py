"""Issue 13 point 1: a few bytes must not hold the DICOM port.

Connections that send part of a PDU (4 bytes of a header, the first 40 bytes of an
A-ASSOCIATE-RQ), nothing at all, or garbage, are closed within the ARTIM (ACSE)
time plus 5 s, in plain and TLS mode, while a real ``/usr/bin/storescu`` stores
meanwhile: connections that are not associated take no association slot. A
P-DATA-TF announcing 100,000 bytes of which 20 arrive is dropped within the
network timeout. After the node sends an A-ABORT the connection is closed at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.hostile_dicom.helpers import (
    associate,
    associate_rq,
    connect,
    pdu_header,
    wait_closed,
)

CHEST = Path("dicom") / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"
STORESCU = "/usr/bin/storescu"
ACSE_S = 4.0
ATTACKERS = 20


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "server.key", directory / "server.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return key, cert


def _attack_bytes(index: int) -> bytes:
    """What attacker ``index`` sends and then holds: part of a PDU, nothing, garbage."""
    kind = index % 4
    if kind == 0:
        return pdu_header(0x01, 68)[:4]  # 4 bytes of a PDU header
    if kind == 1:
        return associate_rq()[:40]  # the first 40 bytes of an A-ASSOCIATE-RQ
    if kind == 2:
        return b""  # connects and says nothing
    return os.urandom(1000)  # garbage: an A-ABORT, then the socket must close


def _storescu(port: int, path: Path, tls: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [STORESCU, "-v", "-aet", "MODALITY", "-aec", "TRIAGE", "-to", "20", *tls]
    cmd += ["127.0.0.1", str(port), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_partial_pdus_dropped_within_artim_while_storescu_stores(
    mode: str, tmp_path: Path, shared_data: Path, scp_node: Any
) -> None:
    if not os.path.exists(STORESCU) or shutil.which("openssl") is None:
        pytest.skip("dcmtk storescu and openssl needed")
    tls_settings: dict[str, Any] = {}
    tls_client: ssl.SSLContext | None = None
    tls_args: list[str] = []
    if mode == "tls":
        key, cert = _self_signed(tmp_path)
        tls_settings = {"tls_cert": cert, "tls_key": key}
        tls_args = ["+tla", "+cf", str(cert)]
        tls_client = ssl.create_default_context(cafile=str(cert))
    node = scp_node(acse_timeout_seconds=ACSE_S, max_associations=4, **tls_settings)

    attackers: list[socket.socket] = []
    for index in range(ATTACKERS):
        # In TLS mode half the attackers stall the handshake itself (TCP only).
        raw = mode == "tls" and index % 2 == 0
        sock = connect(node.port, tls=None if raw else tls_client)
        payload = b"\x16\x03\x01\x02" if raw and index % 4 == 0 else _attack_bytes(index)
        if payload:
            sock.sendall(payload)
        attackers.append(sock)
    opened = time.monotonic()

    try:
        stored = _storescu(node.port, shared_data / CHEST, tls_args)
        assert stored.returncode == 0, stored.stderr[-2000:]
        assert "Received Store Response (Success)" in stored.stderr
        assert time.monotonic() - opened < ACSE_S, "storescu only got through once they left"

        closed = wait_closed(attackers, timeout=ACSE_S + 5 + 5)
        still_open = sorted(set(range(ATTACKERS)) - set(closed))
        slowest = max(closed.values(), default=0.0)
        print(f"{mode}: {len(closed)}/{ATTACKERS} dropped, slowest after {slowest:.1f} s")
        assert not still_open, f"attackers {still_open} still connected"
        assert slowest <= ACSE_S + 5, f"slowest attacker dropped after {slowest:.1f} s"
    finally:
        for sock in attackers:
            sock.close()


def test_partial_p_data_dropped_within_network_timeout(scp_node: Any) -> None:
    network_s = 5.0
    node = scp_node(network_timeout_seconds=network_s)
    sock = associate(node.port)
    try:
        sock.sendall(pdu_header(0x04, 100_000) + bytes(20))
        closed = wait_closed([sock], timeout=network_s + 10)
        print(f"partial P-DATA dropped after {closed.get(0, float('inf')):.1f} s")
        assert 0 in closed and closed[0] <= network_s + 5
    finally:
        sock.close()


def test_socket_closed_right_after_an_a_abort(scp_node: Any) -> None:
    """Garbage after a valid association: the node aborts and closes at once, even
    though the peer goes on sending (pynetdicom kept reading for the ARTIM time)."""
    node = scp_node(acse_timeout_seconds=30)
    sock = associate(node.port)
    try:
        sock.sendall(b"\xff" * 6)  # unknown PDU type: A-ABORT
        start = time.monotonic()
        data = b""
        deadline = start + 10
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                sock.sendall(os.urandom(512))  # keep talking
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - start
        print(f"closed {elapsed:.1f} s after the A-ABORT")
        assert data[:1] in (b"\x07", b""), data[:16]
        assert elapsed < 5, "the node kept the aborted connection open"
    finally:
        sock.close()
