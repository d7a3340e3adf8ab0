"""C-STORE statuses and the one mapping from failures to them.

=========  ==========================================  ==============================
Status     Meaning (PS3.4 Annex B)                      When the node returns it
=========  ==========================================  ==============================
0x0000     Success                                      bytes durable in the spool and
                                                        the row committed
0xA700     Refused: Out of Resources                    free space below the watermark,
                                                        any spool I/O error, any
                                                        database error (sender retries)
0xA900     Error: Data Set does not match SOP Class     SOP Class UID missing from the
                                                        dataset or different from the
                                                        negotiated abstract syntax
0xC000     Error: Cannot understand                     the dataset cannot be decoded,
                                                        or an element is truncated
0xC001     Error: Cannot understand                     Study, Series or SOP Instance
                                                        UID missing
0xC002     Error: Cannot understand                     a UID is not a valid UID
                                                        (digits and dots, <= 64 chars)
0xC003     Error: Cannot understand                     SOP Instance UID in the dataset
                                                        differs from the command's
                                                        Affected SOP Instance UID
0x0110     Processing failure                           an unexpected error (a bug),
                                                        logged with its traceback
0xC004     Error: Cannot understand                     a known SOP Instance UID with
                                                        other content, when
                                                        ``resent_instance_policy`` is
                                                        ``refuse`` (a permanent error:
                                                        the sender does not retry)
=========  ==========================================  ==============================

Failure responses carry an Error Comment (0000,0902) saying what went wrong.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.dataset import Dataset


class StoreStatus(IntEnum):
    """The statuses the Storage SCP answers with."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    MISSING_UID = 0xC001
    INVALID_UID = 0xC002
    SOP_INSTANCE_MISMATCH = 0xC003
    PROCESSING_FAILURE = 0x0110
    CHANGED_DUPLICATE = 0xC004


class StoreError(Exception):
    """Root of the errors a C-STORE can fail with; each names its status."""

    status: StoreStatus = StoreStatus.PROCESSING_FAILURE


class OutOfResources(StoreError):
    """The spool or the database cannot take the instance now (retryable)."""

    status = StoreStatus.OUT_OF_RESOURCES


class DataSetMismatch(StoreError):
    """The dataset's SOP Class UID is missing or not the negotiated one."""

    status = StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS


class CannotUnderstand(StoreError):
    """The dataset cannot be decoded."""

    status = StoreStatus.CANNOT_UNDERSTAND


class MissingUID(CannotUnderstand):
    """A required UID is absent or empty."""

    status = StoreStatus.MISSING_UID


class InvalidUID(CannotUnderstand):
    """A UID is not digits and dots, or is longer than 64 characters."""

    status = StoreStatus.INVALID_UID


class SOPInstanceMismatch(CannotUnderstand):
    """The dataset's SOP Instance UID is not the command's Affected SOP Instance UID."""

    status = StoreStatus.SOP_INSTANCE_MISMATCH


class ChangedDuplicate(StoreError):
    """A known SOP Instance UID arrived with other content and the policy refuses it."""

    status = StoreStatus.CHANGED_DUPLICATE


def status_for_exception(exc: BaseException) -> StoreStatus:
    """Map a failure to the status sent back to the peer.

    Parameters
    ----------
    exc : BaseException
        What went wrong.

    Returns
    -------
    StoreStatus
        The error's own status for a :class:`StoreError`; ``OUT_OF_RESOURCES``
        for an :class:`OSError` (the spool) ; ``PROCESSING_FAILURE`` otherwise.
    """
    if isinstance(exc, StoreError):
        return exc.status
    if isinstance(exc, OSError):
        return StoreStatus.OUT_OF_RESOURCES
    return StoreStatus.PROCESSING_FAILURE


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """Build the status dataset a pynetdicom handler returns.

    Parameters
    ----------
    status : int
        The status code.
    comment : str, optional
        Error Comment (LO: truncated to 64 characters, no backslash).

    Returns
    -------
    pydicom.dataset.Dataset
    """
    ds = Dataset()
    ds.Status = int(status)
    if comment and status != StoreStatus.SUCCESS:
        ds.ErrorComment = comment.replace("\\", "/").replace("\n", " ")[:64]
    return ds
