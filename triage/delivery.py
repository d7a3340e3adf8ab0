"""C-STORE of a result's file (its SR, a heatmap SC) to one destination (pynetdicom SCU).

:func:`store_file` sends one file on one association and maps every failure to
one of two exceptions: :class:`~triage.errors.DestinationUnavailable` (transient:
refused, aborted, timed out, no answer) or :class:`~triage.errors.StoreRejected`
(the peer answered with a failure status; transient only for 0xA7xx).
:func:`retry_delay` is how long a failed delivery waits before the next attempt, and
:func:`next_try_in` adds the retry horizon (``delivery_retry_hours``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association

from triage.errors import DestinationUnavailable, StoreRejected
from worklist.core.settings import Destination, Settings

__all__ = ["next_try_in", "retry_delay", "store_file"]

log = logging.getLogger(__name__)


def store_file(
    path: str | Path,
    destination: Destination | str,
    *,
    calling_ae: str = "TRIAGE",
    timeout: float = 10.0,
) -> int:
    """Send a DICOM file by C-STORE.

    Parameters
    ----------
    path : str or Path
        The DICOM file (an SR, a heatmap Secondary Capture).
    destination : Destination or str
        ``AE@host:port``.
    calling_ae : str
        Our AE title.
    timeout : float
        Seconds for the association, DIMSE and network timeouts.

    Returns
    -------
    int
        The success or warning status of the C-STORE.

    Raises
    ------
    DestinationUnavailable
        The association could not be made or was lost.
    StoreRejected
        The destination answered with a failure status.
    FileNotFoundError
        The file is missing.
    """
    if isinstance(destination, str):
        destination = Destination.parse(destination)
    ds = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    sop_class = str(ds.SOPClassUID)
    ae.add_requested_context(sop_class, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise DestinationUnavailable(f"association with {destination} {reason}")
    _no_delay(assoc)
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or "Status" not in status:
        raise DestinationUnavailable(f"no C-STORE response from {destination}")
    code = int(status.Status)
    if code == 0x0000 or (code & 0xF000) == 0xB000:
        log.info(
            "%s %s stored at %s (status 0x%04X)",
            ds.SOPClassUID.name,
            ds.SOPInstanceUID,
            destination,
            code,
        )
        return code
    raise StoreRejected(f"{destination} answered C-STORE with status 0x{code:04X}", code)


def _no_delay(assoc: Association) -> None:
    """Send each PDU at once (TCP_NODELAY). With Nagle's algorithm the C-STORE request
    waits for the peer's delayed ACK: 44 ms more per SR against a dcmtk storescp here.
    pynetdicom has no option for it, so it is set on the association's socket (left as
    it is where that socket is not there)."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def retry_delay(settings: Settings, attempts: int) -> float:
    """Delay before delivery retry number ``attempts`` (1-based), exponential and capped.

    Parameters
    ----------
    settings : Settings
        ``delivery_backoff_seconds`` (the first delay, doubled each attempt) and
        ``delivery_backoff_max_seconds`` (the longest) are used.
    attempts : int

    Returns
    -------
    float
        Seconds.
    """
    first = settings.delivery_backoff_seconds
    return min(settings.delivery_backoff_max_seconds, first * 2.0 ** max(0, attempts - 1))


def next_try_in(settings: Settings, attempts: int, age_seconds: float) -> float | None:
    """When to try a failed delivery again, or None when its horizon has passed.

    The delay is :func:`retry_delay`, shortened so that the last try falls on the
    horizon (``delivery_retry_hours`` after the row was created or resent).

    Parameters
    ----------
    settings : Settings
    attempts : int
        Tries made so far (1-based).
    age_seconds : float
        Seconds since the row was created (or resent).

    Returns
    -------
    float or None
        Seconds until the next try; None: give up (``failed``).
    """
    left = settings.delivery_retry_hours * 3600.0 - age_seconds
    if left <= 0:
        return None
    return min(retry_delay(settings, attempts), left)
