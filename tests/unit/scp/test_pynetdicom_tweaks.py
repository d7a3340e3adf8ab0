"""``AssociationSocket.recv`` replaced by one that reads each PDU into one buffer."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace
from typing import Any

import pynetdicom
import pytest
from pynetdicom.transport import AssociationSocket

from dicom_scp.pynetdicom_tweaks import read_pdus_in_full, recv_in_full


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def _as_assoc_socket(sock: socket.socket) -> Any:
    return SimpleNamespace(socket=sock)


def test_reads_exactly_the_bytes_asked_for_across_many_sends() -> None:
    ours, theirs = _pair()
    payload = bytes(range(256)) * 40_000  # 10 MB, more than the socket buffers hold
    sender = threading.Thread(target=theirs.sendall, args=(payload + b"next",))
    sender.start()
    try:
        first = recv_in_full(_as_assoc_socket(ours), len(payload))
        assert first == payload
        assert recv_in_full(_as_assoc_socket(ours), 4) == b"next"
    finally:
        sender.join()
        ours.close()
        theirs.close()


def test_returns_what_arrived_when_the_peer_closes() -> None:
    ours, theirs = _pair()
    theirs.sendall(b"abc")
    theirs.close()
    try:
        data = recv_in_full(_as_assoc_socket(ours), 100)
        assert data == b"abc" and isinstance(data, bytearray)
    finally:
        ours.close()


def test_a_timeout_is_raised_as_before() -> None:
    ours, theirs = _pair()
    ours.settimeout(0.05)
    try:
        with pytest.raises(TimeoutError):
            recv_in_full(_as_assoc_socket(ours), 10)
    finally:
        ours.close()
        theirs.close()


def test_installed_once_for_the_checked_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AssociationSocket, "recv", AssociationSocket.recv)  # restored after
    assert read_pdus_in_full() is True
    assert AssociationSocket.recv is recv_in_full
    assert read_pdus_in_full() is True


def test_other_pynetdicom_versions_keep_their_own_reads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def their_recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
        return bytearray(nr_bytes)

    monkeypatch.setattr(AssociationSocket, "recv", their_recv)
    monkeypatch.setattr(pynetdicom, "__version__", "4.0.0")
    assert read_pdus_in_full() is False
    assert AssociationSocket.recv is their_recv
    assert "keeping its own socket reads" in caplog.text
