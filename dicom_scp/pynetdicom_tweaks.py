"""What the node changes in pynetdicom: how it reads PDUs and where it receives datasets.

Both changes are process-wide (every association of the process, SCP or SCU).

Read each PDU from the socket in as few system calls as the kernel allows.

pynetdicom 3.0 reads a PDU with ``socket.recv(4096)`` in a loop and appends each
piece to a ``bytearray``: about 1 800 system calls and as many Python iterations
for one 7 MB radiograph. :func:`read_pdus_in_full` replaces that one method,
``AssociationSocket.recv``, with a version that reads straight into one buffer of
the PDU's size (``recv_into``), so each call takes whatever the kernel holds, up
to the whole PDU. What it returns is the same: ``nr_bytes`` bytes, or fewer when
the peer closed the connection; timeouts and socket errors are raised as before.
Measured with ``bench/ingest.py``: see ``bench/INGEST.md``.

The replacement is process-wide (every association of the process, SCP or SCU)
and is made only for the pynetdicom versions it was checked against.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import pynetdicom
from pynetdicom import _config
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

CHECKED_VERSIONS = ("3.0.",)
"""pynetdicom versions whose ``AssociationSocket.recv`` this replaces."""


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


def read_pdus_in_full() -> bool:
    """Install :func:`recv_in_full` as ``AssociationSocket.recv`` (once).

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
    the handler returns unless the sink has moved it.

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

    def restore() -> None:
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = previous

    return restore
