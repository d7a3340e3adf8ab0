"""Header reading: UID checks, spool paths, InstanceInfo from a dataset."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation as DX
from pydicom.uid import ExplicitVRLittleEndian

from dicom_scp.headers import (
    check_complete,
    clean_uid,
    instance_info_from_dataset,
    read_header,
    spool_path,
)
from dicom_scp.status import (
    CannotUnderstand,
    DataSetMismatch,
    InvalidUID,
    MissingUID,
    SOPInstanceMismatch,
)


@pytest.mark.parametrize(
    "uid", ["1.2.840.10008.1.2", "1", "999.999.01.23.45.6789", "1." + "2" * 62]
)
def test_clean_uid_accepts(uid: str) -> None:
    assert clean_uid(uid, name="UID") == uid
    assert clean_uid(uid + "\x00", name="UID") == uid
    assert clean_uid(" " + uid + " ", name="UID") == uid


@pytest.mark.parametrize("uid", [None, "", " ", "\x00"])
def test_clean_uid_missing(uid: str | None) -> None:
    with pytest.raises(MissingUID):
        clean_uid(uid, name="StudyInstanceUID")


@pytest.mark.parametrize(
    "uid", [".", "..", "1..2", ".1.2", "1.2.", "1.2/3", "../etc", "1.2a", "1." + "2" * 63, "1\\2"]
)
def test_clean_uid_invalid(uid: str) -> None:
    with pytest.raises(InvalidUID):
        clean_uid(uid, name="SOPInstanceUID")


@given(st.text(max_size=80))
def test_clean_uid_never_yields_a_path_component_that_escapes(text: str) -> None:
    try:
        uid = clean_uid(text, name="UID")
    except (MissingUID, InvalidUID):
        return
    assert uid not in {".", ".."}
    assert "/" not in uid and "\\" not in uid and "\x00" not in uid
    assert 0 < len(uid) <= 64 and set(uid) <= set("0123456789.")
    root = Path("/spool")
    path = spool_path(root, uid, uid, uid)
    assert path.parent.parent.parent == root


def _dx(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Modality = "DX"
    ds.PatientID = "P1"
    ds.PatientName = "Doe^John"
    ds.PatientSex = "M"
    ds.PatientAge = "054Y"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.ImageLaterality = "U"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 2048
    ds.Columns = 1536
    ds.SamplesPerPixel = 1
    ds.NumberOfFrames = "1"
    ds.SeriesNumber = "3"
    ds.StudyDescription = "CHEST PA"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _info(ds: Dataset, **kwargs: str) -> object:
    values = {
        "sop_class_uid": str(DX),
        "sop_instance_uid": "1.2.3.4.5",
        "transfer_syntax_uid": "1.2.840.10008.1.2.4.90",
        "file_path": "/spool/x.dcm",
        "size_bytes": 1234,
    }
    values.update(kwargs)
    return instance_info_from_dataset(ds, calling_ae="MOD1", peer_address="10.0.0.5", **values)


def test_instance_info_from_dataset() -> None:
    info = _info(_dx())
    assert info.study_instance_uid == "1.2.3"
    assert info.series_instance_uid == "1.2.3.4"
    assert info.sop_instance_uid == "1.2.3.4.5"
    assert info.sop_class_uid == str(DX)
    assert info.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    assert (info.modality, info.view_position, info.body_part_examined) == ("DX", "PA", "CHEST")
    assert (info.rows, info.columns, info.number_of_frames, info.samples_per_pixel) == (
        2048,
        1536,
        1,
        1,
    )
    assert info.photometric_interpretation == "MONOCHROME2"
    assert (info.patient_sex, info.patient_age, info.image_laterality) == ("M", "054Y", "U")
    assert info.patient_name == "Doe^John" and info.patient_id == "P1"
    assert info.series_number == "3" and info.study_description == "CHEST PA"
    assert (info.calling_ae, info.peer_address) == ("MOD1", "10.0.0.5")
    assert info.requested_priority is None
    assert info.file_path == "/spool/x.dcm" and info.size_bytes == 1234


def test_requested_priority_from_request_attributes_sequence() -> None:
    item = Dataset()
    item.RequestedProcedureID = "RP1"
    item.RequestedProcedurePriority = "STAT"
    assert _info(_dx(RequestAttributesSequence=Sequence([item]))).requested_priority == "STAT"
    assert _info(_dx(RequestedProcedurePriority="HIGH")).requested_priority == "HIGH"


def test_values_are_cleaned_and_fit_their_columns() -> None:
    info = _info(
        _dx(
            StudyDescription="X" * 200,
            PatientAge="054Y\x00",
            Modality="",
            Rows=None,
            NumberOfFrames="-3",
            PatientName="A\x00B",
        )
    )
    assert info.study_description == "X" * 64
    assert info.patient_age == "054Y"
    assert info.modality is None
    assert info.rows is None
    assert info.number_of_frames is None
    assert info.patient_name == "AB"


def test_laterality_falls_back_to_series_laterality() -> None:
    ds = _dx()
    del ds.ImageLaterality
    ds.Laterality = "L"
    assert _info(ds).image_laterality == "L"


def test_mismatches_are_refused() -> None:
    with pytest.raises(DataSetMismatch):
        _info(_dx(), sop_class_uid="1.2.840.10008.5.1.4.1.1.1")
    ds = _dx()
    del ds.SOPClassUID
    with pytest.raises(DataSetMismatch):
        _info(ds)
    with pytest.raises(SOPInstanceMismatch):
        _info(_dx(), sop_instance_uid="1.2.3.4.6")
    ds = _dx()
    del ds.SeriesInstanceUID
    with pytest.raises(MissingUID):
        _info(ds)
    with pytest.raises(InvalidUID):
        _info(_dx(StudyInstanceUID="1.2.x"))


def test_read_header_round_trip_and_garbage() -> None:
    header = read_header(_encoded(_dx()))
    assert header.StudyInstanceUID == "1.2.3"
    with pytest.raises(CannotUnderstand):
        read_header(b"not dicom at all")


def _encoded(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_check_complete() -> None:
    ds = _dx()
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(256)) * 4
    encoded = _encoded(ds)
    check_complete(encoded, str(ExplicitVRLittleEndian))
    with pytest.raises(CannotUnderstand, match="truncated"):
        check_complete(encoded[:-100], str(ExplicitVRLittleEndian))
    # Deflated data is left to the decoder; an unknown syntax is not walked.
    check_complete(encoded[:-100], "1.2.840.10008.1.2.1.99")
    check_complete(b"short", str(ExplicitVRLittleEndian))


def test_read_header_reads_only_what_is_recorded(tmp_path: Path) -> None:
    ds = _dx(InstitutionName="Hospital", StationName="X1")
    ds.RequestAttributesSequence = Sequence([Dataset()])
    ds.RequestAttributesSequence[0].RequestedProcedurePriority = "STAT"
    encoded = _encoded(ds)
    path = tmp_path / "i.dcm"
    path.write_bytes(encoded)
    for source in (encoded, path):
        header = read_header(source)
        assert "InstitutionName" not in header and "StationName" not in header
        assert header.SOPInstanceUID == ds.SOPInstanceUID
        assert _info(header) == _info(ds)


def test_check_complete_on_a_file(tmp_path: Path) -> None:
    ds = _dx()
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(256)) * 4
    encoded = _encoded(ds)
    whole, cut = tmp_path / "whole.dcm", tmp_path / "cut.dcm"
    whole.write_bytes(encoded)
    cut.write_bytes(encoded[:-100])
    check_complete(whole, str(ExplicitVRLittleEndian))
    with pytest.raises(CannotUnderstand, match="truncated"):
        check_complete(cut, str(ExplicitVRLittleEndian))
