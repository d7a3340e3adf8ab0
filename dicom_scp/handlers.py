"""pynetdicom event handlers: thin, event in, status out, never raising.

Bound with ``(evt.EVT_X, handler, [args])`` so that their dependencies arrive as
arguments (see :func:`dicom_scp.ae.build_ae`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.pdu import A_ABORT_RQ

from dicom_scp.sink import InstanceSink, ReceivedInstance
from dicom_scp.status import StoreStatus, status_dataset, status_for_exception
from worklist.core.settings import Settings

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
"""Rejected permanent, service user, calling AE title not recognised."""
REJECT_PEER = (0x01, 0x01, 0x01)
"""Rejected permanent, service user, no reason given (peer address not allowed)."""


def handle_echo(event: Any) -> int:
    """Answer a C-ECHO.

    Parameters
    ----------
    event : pynetdicom.events.Event

    Returns
    -------
    int
        0x0000.
    """
    return int(StoreStatus.SUCCESS)


def received_instance(event: Any) -> ReceivedInstance:
    """Turn a C-STORE event into what a sink takes, without decoding the dataset.

    With pynetdicom's chunked receive on (:func:`dicom_scp.pynetdicom_tweaks.chunked_receive`)
    the dataset is already in a file, File Meta included, and is passed by path;
    otherwise its encoded bytes are.

    Parameters
    ----------
    event : pynetdicom.events.Event
        An ``EVT_C_STORE`` event.

    Returns
    -------
    ReceivedInstance
    """
    requestor = event.assoc.requestor
    # Set when pynetdicom received the dataset into a file (chunked receive).
    path = getattr(event, "dataset_path", None)
    return ReceivedInstance(
        encoded=event.encoded_dataset() if path is None else b"",
        dataset_path=None if path is None else Path(path),
        sop_class_uid=str(event.context.abstract_syntax),
        sop_instance_uid=str(event.request.AffectedSOPInstanceUID or ""),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        calling_ae=str(requestor.ae_title).strip() or None,
        peer_address=str(requestor.address) or None,
    )


def handle_store(event: Any, sink: InstanceSink) -> int | Dataset:
    """Hand a received instance to ``sink`` and answer with its status.

    Parameters
    ----------
    event : pynetdicom.events.Event
        An ``EVT_C_STORE`` event.
    sink : InstanceSink
        Persists and records the instance; success means durable and committed.

    Returns
    -------
    int or pydicom.dataset.Dataset
        0x0000, or a failure status dataset with an Error Comment.
    """
    try:
        result = sink.store(received_instance(event))
    except Exception as exc:  # a handler answers, it never raises
        status = status_for_exception(exc)
        log.exception("C-STORE handler failed (answering 0x%04X)", status)
        return status_dataset(status, f"{type(exc).__name__}")
    if result.ok:
        return int(StoreStatus.SUCCESS)
    return status_dataset(result.status, result.comment)


def close_after_abort(event: Any) -> None:
    """Close the connection as soon as this node has sent an A-ABORT.

    Bound to ``EVT_PDU_SENT``. pynetdicom would keep the connection for the ARTIM
    time (reading whatever the peer still sends); the node closes it at once and
    tells the state machine so (Evt17: back to idle).

    Parameters
    ----------
    event : pynetdicom.events.Event
    """
    if not isinstance(event.pdu, A_ABORT_RQ):
        return
    dul = event.assoc.dul
    if dul.socket is not None:
        dul.socket.close()
    dul.event_queue.put("Evt17")


def handle_association_request(event: Any, settings: Settings) -> None:
    """Reject an association whose calling AE title or peer address is not allowed.

    Bound to ``EVT_REQUESTED``; sends an A-ASSOCIATE-RJ with the proper reason
    (calling AE title not recognised, or no reason given for a refused address).

    Parameters
    ----------
    event : pynetdicom.events.Event
    settings : Settings
        Supplies ``calling_ae_allowed`` and ``peer_allowed``.
    """
    assoc = event.assoc
    try:
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        reason: tuple[int, int, int] | None = None
        if not settings.peer_allowed(address):
            log.warning("rejecting association from %s (%s): address not allowed", address, calling)
            reason = REJECT_PEER
        elif not settings.calling_ae_allowed(calling):
            log.warning(
                "rejecting association from %s: calling AE %r not allowed", address, calling
            )
            reason = REJECT_CALLING_AE
        if reason is not None:
            assoc.acse.send_reject(*reason)
            assoc.kill()
    except Exception:  # never raise: abort rather than accept
        log.exception("association check failed; aborting the association")
        try:
            assoc.abort()
        except Exception:  # already gone: nothing more to do than log
            log.exception("could not abort the association")
