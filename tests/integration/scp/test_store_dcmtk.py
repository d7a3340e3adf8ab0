"""dcmtk echoscu/storescu against the node: real files arrive unchanged, once each."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_scp.sink import SUPERSEDED_DIR
from tests.conftest import spool_files
from tests.integration.scp.helpers import (
    count_instances,
    echoscu,
    need_dcmtk,
    pyscu_store,
    storescu,
    storescu_as_is,
    transfer_syntax_of,
)
from worklist.tables import Instance, Study

# dcmtk 3.6.7's storescu does not know Encapsulated STL Storage; pynetdicom sends it.
NOT_FOR_STORESCU = {"orthanc_Issue137_STL.dcm"}
# pynetdicom's SCU re-encodes big endian and deflated datasets read from a file
# (group lengths dropped, deflate redone), so what it sends is not the file's bytes;
# the dcmtk test covers those two syntaxes element by element.
SCU_REENCODES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def _real_and_other(shared_data: Path) -> list[Path]:
    root = shared_data / "dicom"
    return sorted((root / "real").glob("*.dcm")) + sorted((root / "other").glob("*.dcm"))


def _same_elements(sent: Path, stored: Path) -> None:
    """The data elements (all but group 0002) of two files are identical."""
    a = dcmread(sent)
    b = dcmread(stored)
    # dcmtk drops Data Set Trailing Padding (FFFC,FFFC) before sending.
    a_tags = [e.tag for e in a if e.tag != 0xFFFCFFFC]
    assert a_tags == [e.tag for e in b], f"{sent.name}: element list differs"
    for elem in a:
        if elem.tag == 0xFFFCFFFC:
            continue
        other = b[elem.tag]
        # dcmtk may turn UN into the dictionary VR, and writes encapsulated OW as OB.
        same_vr = elem.VR == other.VR or "UN" in (elem.VR, other.VR)
        assert same_vr or {elem.VR, other.VR} == {"OB", "OW"}, f"{sent.name} {elem.tag}"
        if isinstance(elem.value, bytes) and len(elem.value) % 2 and elem.VR != "UN":
            # dcmtk pads an odd-length value to even length before sending it.
            assert other.value == elem.value + b"\x00", f"{sent.name}: {elem.tag} differs"
            continue
        assert elem.value == other.value, f"{sent.name}: {elem.tag} differs"


def test_echoscu(make_settings: Any, start_node: Any) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    result = echoscu(settings.dicom_port)
    assert result.returncode == 0, result.stderr


def test_storescu_real_files_arrive_unchanged_once(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    files = _real_and_other(shared_data)
    syntaxes = {transfer_syntax_of(f) for f in files}
    # The data set covers the compressed syntaxes the node promises.
    for ts in (
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    ):
        assert ts in syntaxes, f"no test file in {ts}"

    expected: dict[str, Path] = {}
    for path in files:
        sop_uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        if path.name in NOT_FOR_STORESCU:
            assert pyscu_store(settings.dicom_port, path) == 0x0000, path.name
        else:
            result = storescu_as_is(settings.dicom_port, path)
            assert result.returncode == 0, f"{path.name}: {result.stderr[-2000:]}"
        expected[sop_uid] = path

    with session_factory() as session:
        rows = session.scalars(select(Instance)).all()
        assert sorted(r.sop_instance_uid for r in rows) == sorted(expected)
        for row in rows:
            sent = expected[row.sop_instance_uid]
            stored = Path(row.file_path)
            assert stored.is_file()
            assert stored.is_relative_to(settings.spool_dir.absolute())
            assert row.transfer_syntax_uid == transfer_syntax_of(sent), sent.name
            assert transfer_syntax_of(stored) == transfer_syntax_of(sent), sent.name
            assert row.size_bytes == stored.stat().st_size
            assert row.calling_ae in {"STORESCU", "PYSCU"}
            _same_elements(sent, stored)
    # Nothing but the instances in the spool: no temp file left behind. The data set
    # holds some SOP Instance UIDs more than once with other bytes (other transfer
    # syntaxes): each later copy is a new version, the earlier one kept aside.
    spooled = spool_files(settings.spool_dir)
    superseded = [p for p in spooled if SUPERSEDED_DIR in p.parts]
    assert len(spooled) - len(superseded) == len(expected)
    assert len(superseded) <= len(files) - len(expected)


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, after its File Meta Information."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    offset = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    return path.read_bytes()[offset:]


def test_raw_bytes_sent_are_kept_byte_for_byte(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    """pynetdicom sends a file's dataset bytes unchanged: the spool keeps them exactly."""
    settings = make_settings()
    start_node(settings)
    last_sent: dict[str, Path] = {}  # some test files share a SOP Instance UID
    for path in _real_and_other(shared_data):
        assert pyscu_store(settings.dicom_port, path) == 0x0000, path.name
        last_sent[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    with session_factory() as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
    assert rows.keys() == last_sent.keys()
    for sop_uid, path in last_sent.items():
        stored = Path(rows[sop_uid].file_path)
        if transfer_syntax_of(path) not in SCU_REENCODES:
            assert _dataset_bytes(stored) == _dataset_bytes(path), path.name
        assert rows[sop_uid].transfer_syntax_uid == transfer_syntax_of(path)


def test_header_values_recorded(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    path = shared_data / "dicom" / "real" / "RG1_J2KI.dcm"
    result = storescu_as_is(settings.dicom_port, path)
    assert result.returncode == 0, result.stderr
    ds = dcmread(path, stop_before_pixels=True)
    with session_factory() as session:
        row = session.scalars(select(Instance)).one()
        study = session.get(Study, row.study_id)
        assert row.modality == "CR"
        assert row.rows == 1955 and row.columns == 1841
        assert row.photometric_interpretation == "MONOCHROME1"
        assert row.view_position == ds.get("ViewPosition")
        assert row.body_part_examined == "CHEST"
        assert row.sop_class_uid == str(ds.SOPClassUID)
        assert study is not None and study.study_instance_uid == str(ds.StudyInstanceUID)
        assert study.instance_count == 1


def test_resend_does_not_duplicate(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    files = sorted((shared_data / "dicom" / "real").glob("*.dcm"))[:4]
    for _ in range(2):
        for path in files:
            result = storescu_as_is(settings.dicom_port, path)
            assert result.returncode == 0, result.stderr
    assert count_instances(session_factory) == len(files)
    with session_factory() as session:
        counts = session.scalars(select(Instance.receive_count)).all()
        assert counts == [2] * len(files)
        per_study: dict[str, set[str]] = {}
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            per_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
        studies = session.scalars(select(Study)).all()
        assert {s.study_instance_uid: s.instance_count for s in studies} == {
            uid: len(sops) for uid, sops in per_study.items()
        }
    spooled = spool_files(settings.spool_dir)
    assert len(spooled) == len(files)


def test_unknown_calling_ae_rejected(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    need_dcmtk()
    settings = make_settings(allowed_calling_aes=["MODALITY1", "PACS"])
    start_node(settings)
    path = shared_data / "dicom" / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"

    refused = storescu_as_is(settings.dicom_port, path, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert count_instances(session_factory) == 0
    assert spool_files(settings.spool_dir) == []
    assert echoscu(settings.dicom_port, calling="INTRUDER").returncode != 0

    allowed = storescu_as_is(settings.dicom_port, path, calling="MODALITY1")
    assert allowed.returncode == 0, allowed.stderr
    assert count_instances(session_factory) == 1


def test_peer_address_not_allowed_is_rejected(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    need_dcmtk()
    settings = make_settings(allowed_peers=["10.1.2.0/24"])
    start_node(settings)
    path = shared_data / "dicom" / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"
    refused = storescu_as_is(settings.dicom_port, path)
    assert refused.returncode != 0
    # Closed at accept(), before a byte is read or a thread started (issue 13).
    assert "Association Request Failed" in refused.stdout + refused.stderr
    assert count_instances(session_factory) == 0


def test_wrong_called_ae_rejected(make_settings: Any, start_node: Any) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    result = echoscu(settings.dicom_port, "-aec", "SOMEONE_ELSE")
    assert result.returncode != 0


def test_below_free_space_watermark_refused(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any
) -> None:
    settings = make_settings(min_free_mb=10**9)  # a petabyte: never there
    start_node(settings)
    path = shared_data / "dicom" / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"
    assert pyscu_store(settings.dicom_port, path) == 0xA700
    assert count_instances(session_factory) == 0
    assert spool_files(settings.spool_dir) == []
    if shutil.which("storescu"):
        result = storescu_as_is(settings.dicom_port, path)
        assert "Refused: OutOfResources" in result.stderr
        assert count_instances(session_factory) == 0


@pytest.mark.parametrize("option", ["-xi", "-xe"])
def test_uncompressed_file_proposed_differently_is_stored_as_negotiated(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any, option: str
) -> None:
    need_dcmtk()
    settings = make_settings()
    start_node(settings)
    path = shared_data / "dicom" / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"
    result = storescu(settings.dicom_port, [path], option)
    assert result.returncode == 0, result.stderr
    with session_factory() as session:
        row = session.scalars(select(Instance)).one()
        stored = Path(row.file_path)
        assert transfer_syntax_of(stored) == row.transfer_syntax_uid
        _same_elements(path, stored)
