"""What the node changes in pynetdicom: how it reads PDUs (fast, and bounded in time
and size) and where it receives datasets.

The changes are process-wide (every association of the process, SCP or SCU).

Read each PDU from the socket in as few system calls as the kernel allows.

pynetdicom 3.0 reads a PDU with ``socket.recv(4096)`` in a loop and appends each
piece to a ``bytearray``: about 1 800 system calls and as many Python iterations
for one 7 MB radiograph. :func:`read_pdus_in_full` replaces that one method,
``AssociationSocket.recv``, with a version that reads straight into one buffer of
the PDU's size (``recv_into``), so each call takes whatever the kernel holds, up
to the whole PDU. What it returns is the same: ``nr_bytes`` bytes, or fewer when
the peer closed the connection; timeouts and socket errors are raised as before.
Measured with ``bench/ingest.py``: see ``bench/INGEST.md``.

:func:`read_pdu_bounded` replaces ``DULServiceProvider._read_pdu_data``, which
read a PDU by its declared length with no deadline: a peer could hold a thread
and its connection for ever with a few bytes of a PDU header, or make the
process allocate whatever length it declared. Each PDU now

- arrives whole within a deadline kept on the socket itself (``settimeout``):
  before the association is established (and after an A-ABORT or A-ASSOCIATE-RJ)
  what is left of the ARTIM timer (the ACSE timeout, from the connection), then
  the network timeout for each PDU; a peer that misses it gets its connection
  closed (Evt17);
- declares a length within :func:`pdu_length_limit` for its type (an
  A-ASSOCIATE-RQ :data:`ASSOCIATE_PDU_MAX_BYTES`, a P-DATA-TF the maximum PDU
  length the node advertised plus :data:`P_DATA_SLACK_BYTES`), checked before a
  byte of its body is read; beyond it the PDU is invalid (Evt19): the peer is
  aborted and the connection closed (see
  :func:`dicom_scp.handlers.close_after_abort`).

The replacements are process-wide (every association of the process, SCP or SCU)
and are made only for the pynetdicom versions they were checked against.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pynetdicom
from pynetdicom import _config
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dicom_scp.receive_files import guard_receive_files

log = logging.getLogger(__name__)

CHECKED_VERSIONS = ("3.0.",)
"""pynetdicom versions whose ``AssociationSocket.recv`` and PDU reader this replaces."""

ASSOCIATE_PDU_MAX_BYTES = 128 * 1024
"""Longest A-ASSOCIATE-RQ/-AC/-RJ body read: 128 presentation contexts of 64-character
UIDs with many transfer syntaxes, plus a 64 KiB user identity, fit."""
CONTROL_PDU_MAX_BYTES = 64
"""Longest A-RELEASE or A-ABORT body read (the standard's are 4 bytes)."""
P_DATA_SLACK_BYTES = 1024
"""Bytes a P-DATA-TF may exceed the advertised maximum PDU length by (senders differ on
whether PDV item headers count)."""
P_DATA_UNLIMITED_MAX_BYTES = 64 * 1024 * 1024
"""Longest P-DATA-TF read when the node advertised no maximum (0)."""
_PDU_HEADER = struct.Struct(">BBL")
_PRE_ASSOCIATION_STATES = ("Sta1", "Sta2", "Sta13")
"""DUL states whose reads are bounded by the ARTIM timer instead of the network timeout:
waiting for the A-ASSOCIATE-RQ, and waiting for the peer to close."""


def recv_in_full(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from the association's socket into one buffer.

    Parameters
    ----------
    self : AssociationSocket
    nr_bytes : int
        Bytes to read.

    Returns
    -------
    bytearray
        ``nr_bytes`` long, or shorter when the peer closed the connection first.
    """
    sock = self.socket
    if sock is None:
        raise OSError("the association's socket is closed")
    buffer = bytearray(nr_bytes)
    received = 0
    with memoryview(buffer) as view:
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:
                break
            received += count
    if received < nr_bytes:
        del buffer[received:]
    return buffer


def pdu_length_limit(pdu_type: int, max_pdu: int) -> int:
    """The longest body a PDU of ``pdu_type`` may declare before it is read.

    Parameters
    ----------
    pdu_type : int
        0x01-0x07.
    max_pdu : int
        The maximum PDU length this node advertised (0: none).

    Returns
    -------
    int
        Bytes after the 6-byte PDU header.
    """
    if pdu_type in (0x01, 0x02, 0x03):
        return ASSOCIATE_PDU_MAX_BYTES
    if pdu_type == 0x04:
        return max_pdu + P_DATA_SLACK_BYTES if max_pdu else P_DATA_UNLIMITED_MAX_BYTES
    return CONTROL_PDU_MAX_BYTES


def _read_allowance(dul: DULServiceProvider) -> float | None:
    """Seconds the next whole PDU may take to arrive (None: no deadline)."""
    if dul.state_machine.current_state in _PRE_ASSOCIATION_STATES:
        timer = dul.artim_timer
        return None if timer.timeout is None else max(0.0, timer.remaining)
    return dul.network_timeout


def _recv_by(sock: socket.socket, view: memoryview, deadline: float | None) -> int:
    """Fill ``view`` from ``sock`` by ``deadline`` (monotonic); bytes read (fewer: closed).

    Raises
    ------
    TimeoutError
        When the deadline passes first.
    """
    received = 0
    while received < len(view):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("PDU not received in time")
            sock.settimeout(left)
        count = sock.recv_into(view[received:])
        if not count:
            break
        received += count
    return received


def read_pdu_bounded(self: DULServiceProvider) -> None:
    """Read one PDU within its deadline and length limit (see the module docstring).

    A replacement for ``DULServiceProvider._read_pdu_data`` with the same events: the
    PDU's event and the decoded PDU queued, Evt17 when the connection is closed or
    the deadline passes, Evt19 for an unknown type, a length over the limit, or a
    PDU that cannot be decoded.
    """
    assoc_socket = self.socket
    sock = assoc_socket.socket if assoc_socket is not None else None
    if sock is None:
        self.event_queue.put("Evt17")
        return
    allowance = _read_allowance(self)
    deadline = None if allowance is None else time.monotonic() + allowance
    peer = self.assoc.requestor.address if self.assoc.is_acceptor else self.assoc.acceptor.address
    try:
        header = bytearray(_PDU_HEADER.size)
        with memoryview(header) as view:
            if _recv_by(sock, view, deadline) < len(header):
                self.event_queue.put("Evt17")  # closed by the peer
                return
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        if pdu_type not in range(0x01, 0x08):
            log.warning("DICOM peer %s sent an unknown PDU type 0x%02X: aborting", peer, pdu_type)
            self.event_queue.put("Evt19")
            return
        limit = pdu_length_limit(pdu_type, self.assoc.ae.maximum_pdu_size)
        if length > limit:
            log.warning(
                "DICOM peer %s declared a %d-byte PDU of type 0x%02X, over the %d-byte "
                "limit: aborting",
                peer,
                length,
                pdu_type,
                limit,
            )
            self.event_queue.put("Evt19")
            return
        pdu_bytes = bytearray(_PDU_HEADER.size + length)
        pdu_bytes[: _PDU_HEADER.size] = header
        with memoryview(pdu_bytes) as view:
            if _recv_by(sock, view[_PDU_HEADER.size :], deadline) < length:
                self.event_queue.put("Evt17")
                return
    except TimeoutError:
        log.warning(
            "DICOM peer %s did not send a whole PDU within %.0f s: closing the connection",
            peer,
            allowance or 0.0,
        )
        self.event_queue.put("Evt17")
        return
    except OSError as exc:
        log.warning("DICOM connection from %s failed while reading: %s", peer, exc)
        self.event_queue.put("Evt17")
        return
    finally:
        # Sends (blocking) keep the network timeout, not what was left of a deadline.
        _restore_timeout(sock, self.network_timeout)
    try:
        pdu, event = self._decode_pdu(pdu_bytes)
    except Exception:  # noqa: BLE001 - any undecodable PDU is invalid (Evt19)
        log.warning("DICOM peer %s sent a PDU that cannot be decoded: aborting", peer)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def _restore_timeout(sock: socket.socket, timeout: float | None) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile
        sock.settimeout(timeout)


def read_pdus_in_full() -> bool:
    """Install :func:`recv_in_full` and :func:`read_pdu_bounded` in pynetdicom (once).

    Returns
    -------
    bool
        True when installed (now or before); False, with a warning, for a
        pynetdicom version it was not checked against, which keeps its own reads.
    """
    if AssociationSocket.recv is recv_in_full:
        return True
    version = pynetdicom.__version__
    if not version.startswith(CHECKED_VERSIONS):
        log.warning("pynetdicom %s: keeping its own socket reads (4 KiB at a time)", version)
        return False
    AssociationSocket.recv = recv_in_full  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = read_pdu_bounded  # type: ignore[method-assign]
    return True


def chunked_receive(directory: Path) -> Callable[[], None]:
    """Have pynetdicom receive C-STORE datasets into files in ``directory``.

    Sets pynetdicom's ``_config.STORE_RECV_CHUNKED_DATASET``: each dataset is
    written, File Meta first, to a temporary file while it arrives, instead of
    being gathered in memory, and the handler gets its path
    (``event.dataset_path``). pynetdicom creates that file with
    :class:`tempfile.NamedTemporaryFile` in the default temporary directory, so
    ``tempfile.tempdir`` is set to ``directory``; both are process-wide. With
    ``directory`` inside the spool the sink fsyncs and renames the file into place
    instead of writing the dataset a second time. pynetdicom removes the file after
    the handler returns unless the sink has moved it. A write that fails (a full
    disk) removes the partial file at once and the C-STORE is refused with 0xA700
    (:mod:`dicom_scp.receive_files`).

    Parameters
    ----------
    directory : Path
        Where datasets are received; created when missing. Use
        :func:`dicom_scp.sink.incoming_dir` of the spool.

    Returns
    -------
    callable
        Restores both settings as they were.
    """
    directory.mkdir(parents=True, exist_ok=True)
    previous = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(directory)
    unguard = guard_receive_files()

    def restore() -> None:
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = previous
        unguard()

    return restore
