"""Broken input: a clear failure status or success-and-recorded, never a crash."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from dicom_scp.sink import TEMP_SUFFIX, ReceivedInstance, SpoolSink
from dicom_scp.status import StoreStatus
from tests.conftest import spool_files
from tests.integration.scp.helpers import (
    STORESCU_TS_OPTION,
    count_instances,
    echoscu,
    need_dcmtk,
    pyscu_echo,
    pyscu_store,
    sendable_torture_files,
    storescu_as_is,
)
from worklist.tables import Instance

FAILURE_STATUSES = {0xA700, 0xA900, 0x0110} | set(range(0xC000, 0xD000))


def _sop_uid(path: Path) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - an unreadable file has no UID to look for
        return None


def test_torture_files_get_clear_statuses_and_server_keeps_serving(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    settings = make_settings()
    start_node(settings)
    files = sendable_torture_files(shared_data)
    assert len(files) >= 20
    outcomes: dict[str, int | None] = {}
    for path in files:
        try:
            status = pyscu_store(settings.dicom_port, path)
        except Exception:  # noqa: BLE001, S112 - pynetdicom as SCU refuses some files itself
            continue
        outcomes[path.name] = status
        uid = _sop_uid(path)
        if status == 0x0000 and uid is not None:
            assert count_instances(session_factory, uid) == 1, path.name
        elif status is not None:
            assert status in FAILURE_STATUSES, f"{path.name}: 0x{status:04X}"
            if uid is not None:
                assert count_instances(session_factory, uid) == 0, path.name
        assert pyscu_echo(settings.dicom_port) == 0x0000, f"not serving after {path.name}"

    # Known answers: a header without Study Instance UID is missing a UID; a private
    # SOP class is not negotiated (no context); a valid chest CR with hostile names is
    # stored.
    assert outcomes["fodicom_GH223_elscint_private_SQ.dcm"] == StoreStatus.MISSING_UID
    assert outcomes["fodicom_GH220_private_sop_emptySQ.dcm"] is None
    assert outcomes["derived_fuji_CR_chest_xss_names.dcm"] == 0x0000
    assert any(status == 0x0000 for status in outcomes.values())

    with session_factory() as session:
        for row in session.scalars(select(Instance)):
            assert Path(row.file_path).is_file()
    assert not list(settings.spool_dir.rglob(f"*{TEMP_SUFFIX}"))


def test_torture_files_with_storescu(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    for path in sendable_torture_files(shared_data):
        ts = str(read_file_meta_info(path).TransferSyntaxUID)
        if ts not in STORESCU_TS_OPTION:
            continue
        result = storescu_as_is(settings.dicom_port, path)
        uid = _sop_uid(path)
        if "Received Store Response (Success)" in result.stderr and uid:
            assert count_instances(session_factory, uid) == 1, path.name
    assert echoscu(settings.dicom_port).returncode == 0


@pytest.mark.parametrize(
    "name",
    [
        "orthanc_Deeply-Nested-Sequence.dcm",
        "MR_truncated.dcm",
        "fodicom_GH626_bad_private_SQ.dcm",
    ],
)
def test_broken_structure_cannot_be_understood(
    name: str, shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    # pynetdicom as SCU cannot read the first file, and re-encodes the others (which
    # mends them), so they are handed to the sink as the SCP would hand over what a
    # faulty sender sent: the raw Part 10 bytes.
    path = shared_data / "dicom" / "torture" / name
    meta = read_file_meta_info(path)
    received = ReceivedInstance(
        encoded=path.read_bytes(),
        sop_class_uid=str(meta.MediaStorageSOPClassUID),
        sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
    )
    spool = tmp_path / "spool"
    result = SpoolSink(spool, session_factory, 0).store(received)
    assert result.status == StoreStatus.CANNOT_UNDERSTAND
    assert count_instances(session_factory) == 0
    assert spool_files(spool) == []


def _instance_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ct(**overrides: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-123"
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    return ds


def _received(ds: Dataset, **overrides: Any) -> ReceivedInstance:
    values: dict[str, Any] = {
        "encoded": _instance_bytes(ds),
        "sop_class_uid": str(CTImageStorage),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "transfer_syntax_uid": str(ExplicitVRLittleEndian),
        "calling_ae": "TEST",
        "peer_address": "127.0.0.1",
    }
    values.update(overrides)
    return ReceivedInstance(**values)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_sop_class", StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("no_sop_class", StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("no_study_uid", StoreStatus.MISSING_UID),
        ("path_in_study_uid", StoreStatus.INVALID_UID),
        ("dotdot_series_uid", StoreStatus.INVALID_UID),
        ("long_uid", StoreStatus.INVALID_UID),
        ("sop_instance_mismatch", StoreStatus.SOP_INSTANCE_MISMATCH),
        ("garbage", StoreStatus.CANNOT_UNDERSTAND),
    ],
)
def test_bad_instances_refused_without_trace(
    case: str,
    expected: StoreStatus,
    session_factory: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if case == "wrong_sop_class":
        received = _received(_ct(), sop_class_uid="1.2.840.10008.5.1.4.1.1.1")
    elif case == "no_sop_class":
        received = _received(_ct(SOPClassUID=None))
    elif case == "no_study_uid":
        received = _received(_ct(StudyInstanceUID=None))
    elif case == "path_in_study_uid":
        received = _received(_ct(StudyInstanceUID="../../etc"))
    elif case == "dotdot_series_uid":
        received = _received(_ct(SeriesInstanceUID=".."))
    elif case == "long_uid":
        received = _received(_ct(SeriesInstanceUID="1." + "2" * 70))
    elif case == "sop_instance_mismatch":
        received = _received(_ct(), sop_instance_uid=str(generate_uid()))
    else:
        # A valid File Meta (as pynetdicom writes it) followed by bytes that are no dataset.
        good = _instance_bytes(_ct())
        meta_end = (
            128 + 4 + 12 + int(dcmread(BytesIO(good)).file_meta.FileMetaInformationGroupLength)
        )
        received = _received(_ct(), encoded=good[:meta_end] + b"\x08\x00\x16\x00UI\xff\x7f" * 40)
    spool = tmp_path / "spool"
    with caplog.at_level("INFO"):
        result = SpoolSink(spool, session_factory, 0).store(received)
    if expected == StoreStatus.CANNOT_UNDERSTAND:
        assert 0xC000 <= result.status <= 0xCFFF
    else:
        assert result.status == expected
    assert result.comment
    assert count_instances(session_factory) == 0
    assert spool_files(spool) == []
    assert "SECRET-ID-123" not in caplog.text and "Doe^Jane" not in caplog.text


def test_patient_identity_not_logged_on_success(
    session_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _ct()
    with caplog.at_level("DEBUG", logger="dicom_scp"):
        result = SpoolSink(tmp_path / "spool", session_factory, 0).store(_received(ds))
    assert result.ok
    assert ds.SOPInstanceUID in caplog.text
    assert "SECRET-ID-123" not in caplog.text and "Doe" not in caplog.text
    with session_factory() as session:
        row = session.scalars(select(Instance)).one()
        assert row.modality == "CT"


def test_no_patient_identity_in_logs_over_the_network(
    shared_data: Path,
    make_settings: Any,
    start_node: Any,
    session_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    path = shared_data / "dicom" / "torture" / "derived_fuji_CR_chest_xss_names.dcm"
    ds = dcmread(path, stop_before_pixels=True)
    with caplog.at_level("DEBUG", logger="dicom_scp"), caplog.at_level("INFO"):
        start_node(settings)
        assert pyscu_store(settings.dicom_port, path) == 0x0000
    assert str(ds.SOPInstanceUID) in caplog.text
    for secret in (str(ds.PatientName), str(ds.PatientID)):
        assert secret not in caplog.text
    with session_factory() as session:
        # Stored as received (escaping is the web page's business), cut to the column.
        assert session.scalars(select(Instance)).one().sop_instance_uid == ds.SOPInstanceUID
