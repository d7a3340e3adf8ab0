"""Study stability through the real SCP: one hand-off per quiet study, re-open on late
instances (watcher running, fake queue recording enqueues)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.conftest import wait_until
from tests.integration.scp.helpers import RecordingQueue, need_dcmtk, storescu_as_is
from worklist.tables import Study

CHEST = "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm"


def _instances_of_one_study(source: Path, out: Path, count: int) -> list[Path]:
    """Copies of ``source`` as new instances of one new study (same series)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        ds = dcmread(source)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"instance{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_study_sent_in_two_runs_is_handed_off_once_then_reopened(
    shared_data: Path,
    make_settings: Any,
    start_node: Any,
    session_factory: Any,
    recording_queue: RecordingQueue,
    tmp_path: Path,
) -> None:
    need_dcmtk()
    quiet = 2.0
    settings = make_settings(stable_seconds=quiet, stability_poll_seconds=0.1)
    node = start_node(settings)
    first, second, late = _instances_of_one_study(shared_data / CHEST, tmp_path, 3)

    started = time.monotonic()
    assert storescu_as_is(settings.dicom_port, first).returncode == 0
    assert storescu_as_is(settings.dicom_port, second).returncode == 0
    # Both runs landed inside one quiet period (else the test proves nothing).
    assert time.monotonic() - started < quiet

    handed = wait_until(recording_queue.snapshot, timeout=30, what="first hand-off")
    with session_factory() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 2
    assert handed == [(study.id, 1)]
    # A few more watcher rounds change nothing: one hand-off for the two runs.
    rounds = node.watcher.rounds
    wait_until(lambda: node.watcher.rounds >= rounds + 3, timeout=10, what="more rounds")
    assert recording_queue.snapshot() == [(study.id, 1)]

    # A late instance after the hand-off re-opens the study: revision 2.
    assert storescu_as_is(settings.dicom_port, late).returncode == 0
    wait_until(lambda: len(recording_queue.snapshot()) == 2, timeout=30, what="second hand-off")
    assert recording_queue.snapshot() == [(study.id, 1), (study.id, 2)]
    with session_factory() as session:
        reopened = session.get(Study, study.id)
        assert reopened is not None
        assert reopened.instance_count == 3 and reopened.revision == 2
