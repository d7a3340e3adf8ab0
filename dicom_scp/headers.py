"""Reading a received instance's header: UID checks, spool paths, InstanceInfo.

Plain functions over bytes and pydicom datasets, testable without a network.
"""

from __future__ import annotations

import os
import re
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

from dicom_scp.status import (
    CannotUnderstand,
    DataSetMismatch,
    InvalidUID,
    MissingUID,
    SOPInstanceMismatch,
)
from worklist.core.contracts import InstanceInfo
from worklist.tables import Instance, Series, Study

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MAX_UID_LENGTH = 64
_MAX_INT = 2**31 - 1


def clean_uid(value: Any, *, name: str) -> str:
    """Check a UID and return it without padding.

    Parameters
    ----------
    value : Any
        The UID as read (``None`` or empty when absent).
    name : str
        What the UID is, for the error message (for example ``"StudyInstanceUID"``).

    Returns
    -------
    str
        The UID, safe to use as a file or directory name.

    Raises
    ------
    MissingUID
        When it is absent or empty.
    InvalidUID
        When it is not digits separated by single dots, or longer than 64 characters.
    """
    text = "" if value is None else str(value).strip("\x00 ")
    if not text:
        raise MissingUID(f"{name} missing")
    if len(text) > _MAX_UID_LENGTH or not _UID_RE.match(text):
        raise InvalidUID(f"{name} is not a valid UID")
    return text


def spool_path(spool_dir: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Return where an instance lives in the spool.

    Parameters
    ----------
    spool_dir : Path
        The spool root.
    study_uid, series_uid, sop_uid : str
        UIDs already checked by :func:`clean_uid`.

    Returns
    -------
    Path
        ``spool_dir/<study>/<series>/<sop>.dcm``.
    """
    for uid in (study_uid, series_uid, sop_uid):
        clean_uid(uid, name="UID")
    return spool_dir / study_uid / series_uid / f"{sop_uid}.dcm"


def check_complete(encoded: bytes | Path, transfer_syntax_uid: str) -> None:
    """Check that no top-level element of a received dataset runs past its end.

    pydicom silently shortens a value whose declared length exceeds the bytes
    left (a truncated Pixel Data, for example), so the top-level elements are
    walked here without reading their values. Deflated datasets are not checked
    (a damaged zlib stream fails when it is read).

    Parameters
    ----------
    encoded : bytes or Path
        Preamble, File Meta (with its group length, as pynetdicom writes it) and
        dataset; or a file holding them.
    transfer_syntax_uid : str
        The transfer syntax of the dataset.

    Raises
    ------
    CannotUnderstand
        When the dataset is truncated or its element structure cannot be walked.
    """
    syntax = UID(transfer_syntax_uid)
    if syntax.is_deflated or not syntax.is_transfer_syntax:
        return
    if isinstance(encoded, bytes | bytearray):
        _walk_elements(BytesIO(encoded), len(encoded), syntax)
        return
    with open(encoded, "rb") as stream:
        _walk_elements(stream, os.fstat(stream.fileno()).st_size, syntax)


def _walk_elements(stream: BinaryIO, size: int, syntax: UID) -> None:
    head = stream.read(144)
    if head[128:136] != b"DICM\x02\x00\x00\x00" or len(head) < 144:
        return  # no File Meta group length: nothing to anchor the walk on
    stream.seek(144 + int.from_bytes(head[140:144], "little"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in data_element_generator(
                stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=256
            ):
                pass
    except Exception as exc:  # any structural error means "cannot understand"
        raise CannotUnderstand(f"dataset cannot be decoded: {type(exc).__name__}") from exc
    if stream.tell() > size:
        raise CannotUnderstand("dataset truncated: an element runs past the end")


HEADER_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "SeriesDescription",
    "SeriesNumber",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
    "RequestedProcedurePriority",
    "RequestAttributesSequence",
)
"""The top-level elements :func:`instance_info_from_dataset` uses; the rest is skipped."""

_HEADER_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]


def read_header(encoded: bytes | Path) -> Dataset:
    """Decode the elements of a received instance that the node records.

    Only :data:`HEADER_KEYWORDS` are read and decoded (pydicom's ``specific_tags``);
    the other elements are skipped by their length, and reading stops before the
    pixels. The element structure of the whole dataset is checked separately, by
    :func:`check_complete`.

    Parameters
    ----------
    encoded : bytes or Path
        Preamble, File Meta and dataset, as written to the spool (or the file).

    Returns
    -------
    pydicom.dataset.Dataset

    Raises
    ------
    CannotUnderstand
        When pydicom cannot parse it.
    """
    source = BytesIO(encoded) if isinstance(encoded, bytes | bytearray) else encoded
    try:
        ds = dcmread(source, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        # Decode every element read now, so that a broken value fails here.
        for elem in ds:
            _ = elem.value
    except Exception as exc:  # any parser error means "cannot understand"
        raise CannotUnderstand(f"dataset cannot be decoded: {type(exc).__name__}") from exc
    return ds


def _column_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for table in (Study.__table__, Series.__table__, Instance.__table__):
        for column in table.columns:
            length = getattr(column.type, "length", None)
            if length:
                lengths[column.name] = min(length, lengths.get(column.name, length))
    return lengths


_LENGTHS = _column_lengths()


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - a broken optional value is treated as absent
        return None


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, PersonName):
        text = str(value)
    elif isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    else:
        text = str(value)
    text = text.replace("\x00", "").strip()
    if not text:
        return None
    limit = _LENGTHS.get(field)
    return text[:limit] if limit else text


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= _MAX_INT else None


def _requested_priority(ds: Dataset) -> Any:
    value = _get(ds, "RequestedProcedurePriority")
    if value:
        return value
    items = _get(ds, "RequestAttributesSequence") or []
    try:
        for item in items:
            value = _get(item, "RequestedProcedurePriority")
            if value:
                return value
    except Exception:  # noqa: BLE001 - a broken sequence means "no priority"
        return None
    return None


def instance_info_from_dataset(
    ds: Dataset,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    file_path: str,
    size_bytes: int,
    calling_ae: str | None = None,
    peer_address: str | None = None,
) -> InstanceInfo:
    """Check a received header against the command and turn it into an InstanceInfo.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The header, as from :func:`read_header`.
    sop_class_uid : str
        The negotiated abstract syntax (the command's Affected SOP Class UID).
    sop_instance_uid : str
        The command's Affected SOP Instance UID.
    transfer_syntax_uid : str
        The negotiated transfer syntax.
    file_path : str
        Where the instance is (to be) stored.
    size_bytes : int
        Size of the stored file.
    calling_ae, peer_address : str, optional
        The sender.

    Returns
    -------
    InstanceInfo

    Raises
    ------
    MissingUID, InvalidUID
        When Study, Series or SOP Instance UID is absent or malformed.
    DataSetMismatch
        When the dataset's SOP Class UID is absent or not ``sop_class_uid``.
    SOPInstanceMismatch
        When the dataset's SOP Instance UID is not ``sop_instance_uid``.
    """
    study_uid = clean_uid(_get(ds, "StudyInstanceUID"), name="StudyInstanceUID")
    series_uid = clean_uid(_get(ds, "SeriesInstanceUID"), name="SeriesInstanceUID")
    sop_uid = clean_uid(_get(ds, "SOPInstanceUID"), name="SOPInstanceUID")
    if sop_uid != str(sop_instance_uid).strip("\x00 "):
        raise SOPInstanceMismatch("SOPInstanceUID differs from AffectedSOPInstanceUID")
    ds_class = _get(ds, "SOPClassUID")
    ds_class = "" if ds_class is None else str(ds_class).strip("\x00 ")
    if not ds_class:
        raise DataSetMismatch("SOPClassUID missing from the dataset")
    if ds_class != str(sop_class_uid).strip("\x00 "):
        raise DataSetMismatch("SOPClassUID differs from the negotiated SOP class")

    laterality = _get(ds, "ImageLaterality") or _get(ds, "Laterality")
    text = {
        "modality": "Modality",
        "body_part_examined": "BodyPartExamined",
        "view_position": "ViewPosition",
        "photometric_interpretation": "PhotometricInterpretation",
        "series_description": "SeriesDescription",
        "series_number": "SeriesNumber",
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
        "patient_age": "PatientAge",
        "accession_number": "AccessionNumber",
        "study_id": "StudyID",
        "study_date": "StudyDate",
        "study_time": "StudyTime",
        "study_description": "StudyDescription",
        "referring_physician": "ReferringPhysicianName",
    }
    values: dict[str, Any] = {field: _text(_get(ds, kw), field) for field, kw in text.items()}
    return InstanceInfo(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=ds_class,
        transfer_syntax_uid=str(transfer_syntax_uid),
        file_path=file_path,
        size_bytes=size_bytes,
        calling_ae=_text(calling_ae, "calling_ae"),
        peer_address=_text(peer_address, "peer_address"),
        image_laterality=_text(laterality, "image_laterality"),
        rows=_int(_get(ds, "Rows")),
        columns=_int(_get(ds, "Columns")),
        number_of_frames=_int(_get(ds, "NumberOfFrames")),
        samples_per_pixel=_int(_get(ds, "SamplesPerPixel")),
        requested_priority=_text(_requested_priority(ds), "requested_priority"),
        **values,
    )
