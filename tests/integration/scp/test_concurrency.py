"""Parallel senders: every instance recorded once; the association limit holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from tests.conftest import spool_files, wait_until
from tests.integration.scp.helpers import count_instances, need_dcmtk, pyscu_echo, storescu_as_is
from worklist.tables import Study

CHEST = "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm"


def test_parallel_storescu_one_study(
    shared_data: Path, make_settings: Any, start_node: Any, session_factory: Any, tmp_path: Path
) -> None:
    need_dcmtk()
    settings = make_settings(max_associations=8)
    start_node(settings)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(12):
        ds = dcmread(shared_data / CHEST)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"i{index}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    # Each instance twice, all at once: 24 associations over 6 parallel senders.
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda p: storescu_as_is(settings.dicom_port, p), paths * 2))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    assert all("Received Store Response (Success)" in r.stderr for r in results)
    assert count_instances(session_factory) == 12
    with session_factory() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 12
    spooled = spool_files(settings.spool_dir)
    assert len(spooled) == 12


def test_association_limit(make_settings: Any, start_node: Any) -> None:
    settings = make_settings(max_associations=1)
    start_node(settings)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", settings.dicom_port, ae_title="TRIAGE")
    assert held.is_established
    try:
        second = ae.associate("127.0.0.1", settings.dicom_port, ae_title="TRIAGE")
        assert second.is_rejected
        assert second.acceptor.primitive.result_source == 0x03  # presentation related
        assert second.acceptor.primitive.diagnostic == 0x02  # local limit exceeded
    finally:
        held.release()
    # Once the held association is gone, a new one is accepted again.
    wait_until(lambda: pyscu_echo(settings.dicom_port) == 0x0000, timeout=20, what="echo")
