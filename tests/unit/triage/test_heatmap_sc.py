"""The heatmap Secondary Capture: valid under dciodvfy, same study and patient as its
source, its own series, labelled and burned in, deterministic; and, with
``heatmap_to_pacs``, written by the worker and queued after the SR in the same outbox."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from sqlalchemy import select

from triage.heatmap_sc import (
    SERIES_NUMBER,
    HeatmapImage,
    HeatmapProvenance,
    build_heatmap_sc,
    burn_in_label,
    heatmap_sc_uids,
    write_heatmap_scs,
)
from triage.pipeline import triage_study
from worklist.core.settings import load_settings
from worklist.heatmaps import LABEL
from worklist.outbox import failed_delivery_alert, mark_failed_attempt, requeue_failed
from worklist.tables import Delivery, TriageResult
from worklist.thumbnails import png_from_dataset

from .conftest import make_stable

REAL = "dicom/real"
WHEN = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
PROVENANCE = HeatmapProvenance(
    model_name="cxr-triage-default",
    model_version="0.1.0",
    model_sha256="77e0c1ba1b33d97741ec4ea9462bad02b064dc7b3d1b8f6739f6c14cc6f30568",
    manufacturer="cxr-triage-node project",
    device_name="TRIAGE",
    content_datetime=WHEN,
)


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _image(path: Path) -> HeatmapImage:
    ds = pydicom.dcmread(path)
    grid = np.zeros((8, 8), np.float32)
    grid[3:5, 2:4] = 1.0
    return HeatmapImage(ds, png_from_dataset(ds), grid)


@pytest.mark.parametrize(
    "name",
    [
        "RG1_J2KI.dcm",  # CR, JPEG 2000, PatientOrientation L\F
        "konica_CR_chest_Monochrome1-Jpeg.dcm",  # a birth date that is no date, no orientation
        "canon_DX_chest_966_fixed.dcm",
    ],
)
def test_sc_is_valid_and_of_the_same_study(shared_data: Path, tmp_path: Path, name: str) -> None:
    image = _image(shared_data / REAL / name)
    source = image.header
    ((uid, path),) = write_heatmap_scs([image], PROVENANCE, revision=2, results_dir=tmp_path)
    assert dciodvfy_errors(path) == []
    sc = pydicom.dcmread(path)  # round trip through bytes
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.SOPInstanceUID == uid
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.PatientID == source.PatientID and sc.PatientName == source.PatientName
    series, instance = heatmap_sc_uids(str(source.StudyInstanceUID), 2, str(source.SOPInstanceUID))
    assert (sc.SeriesInstanceUID, sc.SOPInstanceUID) == (series, instance)
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SeriesNumber == SERIES_NUMBER
    assert sc.SeriesDescription == LABEL and sc.ImageComments.startswith(LABEL)
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    preview = Image.open(io.BytesIO(image.preview_png))
    assert sc.Columns == preview.width and sc.Rows > preview.height  # the label band on top
    pixels = sc.pixel_array
    red = (pixels[..., 0].astype(int) - pixels[..., 1]) > 60
    assert red[sc.Rows - preview.height :].any()  # the heatmap over the image
    assert (pixels[: sc.Rows - preview.height] == 255).any()  # the white label


def test_sc_uids_are_deterministic_per_revision(shared_data: Path) -> None:
    image = _image(shared_data / REAL / "RG1_J2KI.dcm")
    a = build_heatmap_sc(image, PROVENANCE, revision=1, instance_number=1)
    b = build_heatmap_sc(image, PROVENANCE, revision=1, instance_number=1)
    c = build_heatmap_sc(image, PROVENANCE, revision=2, instance_number=1)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.SeriesInstanceUID != a.SeriesInstanceUID
    assert np.array_equal(a.pixel_array, b.pixel_array)


@pytest.mark.parametrize("width", [256, 90])
def test_burn_in_label_fits_the_width_above_the_image(width: int) -> None:
    out = burn_in_label(np.full((60, width, 3), 128, np.uint8))
    band = out.shape[0] - 60
    assert out.shape[1:] == (width, 3) and band >= 10
    assert (out[band:] == 128).all()  # no pixel of the image hidden
    ink = np.flatnonzero((out[:band] > 200).all(axis=2).any(axis=0))
    assert ink.size and ink.max() < width - 1  # white text, not cut at the right edge


# -- the worker, with heatmap_to_pacs ----------------------------------------------


@pytest.fixture
def default_classifier():  # type: ignore[no-untyped-def]
    from models.runtime import Classifier, default_model_path

    return Classifier.load(default_model_path(), ["CPUExecutionProvider"])


def test_worker_queues_the_sc_after_the_sr_in_one_outbox(
    session_factory,
    ingest,
    shared_data: Path,
    tmp_path: Path,
    default_classifier,  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        destinations="PACS@127.0.0.1:11999,ARCHIVE@127.0.0.1:11998",
        heatmap_to_pacs=True,
    )
    path = shared_data / REAL / "RG1_from_J2KI_explicit.dcm"  # abnormal (96 %)
    study_id = ingest(path)
    (handoff,) = make_stable(session_factory)
    out = triage_study(session_factory, settings, default_classifier, study_id, handoff.revision)
    assert out.decision == "abnormal" and len(out.deliveries) == 4
    with session_factory() as session:
        result = session.scalar(select(TriageResult).where(TriageResult.study_id == study_id))
        rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        assert [r.kind for r in rows] == ["sr", "sr", "heatmap_sc", "heatmap_sc"]
        assert {r.destination for r in rows[2:]} == {r.destination for r in rows[:2]}
        assert rows[0].sop_instance_uid == result.sr_sop_instance_uid
        sc_path = Path(rows[2].file_path)
        assert sc_path.parent == settings.data_dir / "results"
        assert list(out.deliveries) == [r.id for r in rows]
    assert dciodvfy_errors(sc_path) == []
    sc = pydicom.dcmread(sc_path)
    assert sc.StudyInstanceUID == pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    # A retried task does not write a second result or second rows.
    again = triage_study(session_factory, settings, default_classifier, study_id, handoff.revision)
    assert again.result_id == out.result_id
    with session_factory() as session:
        assert len(session.scalars(select(Delivery)).all()) == 4
        # A failed SC is alerted and re-sent like an SR.
        for row in session.scalars(select(Delivery)).all():
            mark_failed_attempt(session, delivery_id=row.id, error="down", retry_in=None)
        session.commit()
        alert = failed_delivery_alert(session)
        assert alert is not None and alert.startswith("2 AI result(s) and 2 AI heatmap(s)")
        rows = requeue_failed(session, study_instance_uid=str(sc.StudyInstanceUID))
        assert sorted(r.kind for r in rows) == ["heatmap_sc", "heatmap_sc", "sr", "sr"]
        session.commit()
        assert failed_delivery_alert(session) is None


def test_without_the_setting_only_the_sr_is_queued(
    session_factory,
    ingest,
    shared_data: Path,
    tmp_path: Path,
    default_classifier,  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(data_dir=tmp_path / "data", destinations="PACS@127.0.0.1:11999")
    assert settings.heatmap_to_pacs is False
    study_id = ingest(shared_data / REAL / "RG1_from_J2KI_explicit.dcm")
    (handoff,) = make_stable(session_factory)
    out = triage_study(session_factory, settings, default_classifier, study_id, handoff.revision)
    assert out.decision == "abnormal"
    with session_factory() as session:
        assert [r.kind for r in session.scalars(select(Delivery)).all()] == ["sr"]
