"""The accepted SOP classes and transfer syntaxes, and the status mapping."""

from __future__ import annotations

import errno

import pytest
from pydicom.uid import UID
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from dicom_scp.contexts import (
    SUPPORTED_TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    storage_sop_classes,
    supported_contexts,
)
from dicom_scp.status import (
    CannotUnderstand,
    DataSetMismatch,
    InvalidUID,
    MissingUID,
    OutOfResources,
    SOPInstanceMismatch,
    StoreStatus,
    status_dataset,
    status_for_exception,
)

PROMISED = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def test_every_promised_transfer_syntax_is_supported_and_nothing_else() -> None:
    assert set(SUPPORTED_TRANSFER_SYNTAXES) == set(PROMISED)
    assert len(SUPPORTED_TRANSFER_SYNTAXES) == len(set(SUPPORTED_TRANSFER_SYNTAXES))
    for uid in SUPPORTED_TRANSFER_SYNTAXES:
        assert UID(uid).is_transfer_syntax, uid


def test_storage_classes_cover_chest_radiographs_and_all_of_pynetdicom() -> None:
    classes = storage_sop_classes()
    assert len(classes) == len(set(classes)) >= 150
    for uid in (
        "1.2.840.10008.5.1.4.1.1.1",  # CR
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    ):
        assert uid in classes
    assert VERIFICATION_SOP_CLASS not in classes


def test_supported_contexts() -> None:
    contexts = supported_contexts()
    assert str(contexts[0].abstract_syntax) == VERIFICATION_SOP_CLASS
    storage = contexts[1:]
    assert [str(c.abstract_syntax) for c in storage] == list(storage_sop_classes())
    for context in storage:
        assert [str(ts) for ts in context.transfer_syntax] == list(SUPPORTED_TRANSFER_SYNTAXES)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (OutOfResources("disk"), 0xA700),
        (DataSetMismatch("class"), 0xA900),
        (CannotUnderstand("parse"), 0xC000),
        (MissingUID("x"), 0xC001),
        (InvalidUID("x"), 0xC002),
        (SOPInstanceMismatch("x"), 0xC003),
        (OSError(errno.ENOSPC, "full"), 0xA700),
        (PermissionError("denied"), 0xA700),
        (ValueError("bug"), 0x0110),
        (KeyError("bug"), 0x0110),
    ],
)
def test_status_for_exception(exc: BaseException, status: int) -> None:
    assert status_for_exception(exc) == status


def test_every_status_is_a_storage_status_with_the_right_category() -> None:
    for status in StoreStatus:
        category = STORAGE_SERVICE_CLASS_STATUS[int(status)][0]
        assert category == ("Success" if status == StoreStatus.SUCCESS else "Failure"), status


def test_status_dataset_truncates_comment() -> None:
    ds = status_dataset(0xC002, "a\\b" + "x" * 100)
    assert ds.Status == 0xC002
    assert len(ds.ErrorComment) == 64 and "\\" not in ds.ErrorComment
    assert "ErrorComment" not in status_dataset(0x0000, "ignored")
