"""triage_study as a plain function, on SQLite and PostgreSQL, with the tiny model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from triage.pipeline import MAX_ATTEMPTS, triage_study
from triage.sr import read_sr_summary
from worklist.core.settings import load_settings
from worklist.priority import Priority
from worklist.results import ClaimStatus
from worklist.tables import Delivery, Study, TriageClaim, TriageImage, TriageResult

from .conftest import make_stable

DICOM = "dicom"


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path):  # type: ignore[no-untyped-def]
    return load_settings(
        data_dir=tmp_path / "data",
        model_path=tiny_model,
        destinations="PACS@127.0.0.1:11999,ARCHIVE@127.0.0.1:11998",
    )


def test_chest_study_is_triaged_with_sr_and_outbox(
    session_factory,
    settings,
    tiny_classifier,
    ingest,
    shared_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    study_id = ingest(shared_data / DICOM / "real/RG1_J2KI.dcm")
    (handoff,) = make_stable(session_factory)
    out = triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision)
    assert out.claim is ClaimStatus.CLAIMED
    assert out.status == "triaged" and out.decision in ("abnormal", "normal")
    assert len(out.deliveries) == 2
    with session_factory() as session:
        study = session.get(Study, study_id)
        assert study.state == "triaged"
        result = session.scalar(select(TriageResult).where(TriageResult.study_id == study_id))
        assert result.model_name == "tiny-test-model"
        assert result.model_sha256 == tiny_classifier.card.sha256
        assert result.operating_point == "balanced"
        assert result.threshold == pytest.approx(0.5)
        assert result.providers == "CPUExecutionProvider"
        assert result.started_at <= result.finished_at
        assert result.queued_at is not None
        images = session.scalars(select(TriageImage)).all()
        assert len(images) == 1 and images[0].evaluated and images[0].probability is not None
        assert result.probability == pytest.approx(images[0].probability)
        expected = Priority.ABNORMAL if result.decision == "abnormal" else Priority.NORMAL
        if result.decision == "abnormal" and result.probability >= 0.9:
            expected = Priority.ABNORMAL_HIGH
        assert result.priority == expected
        deliveries = session.scalars(select(Delivery).order_by(Delivery.destination)).all()
        assert [d.destination for d in deliveries] == [
            "ARCHIVE@127.0.0.1:11998",
            "PACS@127.0.0.1:11999",
        ]
        assert all(d.state == "pending" and d.attempts == 0 for d in deliveries)
    summary = read_sr_summary(result.sr_path)
    assert summary["sop_instance_uid"] == result.sr_sop_instance_uid
    assert summary["finding"] == result.decision
    assert summary["probability"] == pytest.approx(result.probability, abs=1e-6)
    assert Path(result.sr_path).parent == settings.data_dir / "results"


def test_retry_does_not_redo_a_revision(
    session_factory,
    settings,
    tiny_classifier,
    ingest,
    shared_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    study_id = ingest(shared_data / DICOM / "real/fuji_CR_chest_from_fodicom_withmeta.dcm")
    (handoff,) = make_stable(session_factory)
    first = triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision)
    again = triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision)
    assert again.claim is ClaimStatus.DONE and again.result_id == first.result_id
    stale = triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision + 1)
    assert stale.claim is ClaimStatus.STALE
    with session_factory() as session:
        assert len(session.scalars(select(TriageResult)).all()) == 1
        assert len(session.scalars(select(Delivery)).all()) == 2


def test_late_instance_makes_a_new_revision_with_a_new_sr(
    session_factory,
    settings,
    tiny_classifier,
    ingest,
    shared_data: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    src = pydicom.dcmread(shared_data / DICOM / "real/fuji_CR_chest_from_fodicom_withmeta.dcm")
    study_id = ingest(shared_data / DICOM / "real/fuji_CR_chest_from_fodicom_withmeta.dcm")
    (h1,) = make_stable(session_factory)
    r1 = triage_study(session_factory, settings, tiny_classifier, study_id, h1.revision)
    late = src.copy()
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
    late_path = tmp_path / "late.dcm"
    late.save_as(late_path)
    assert ingest(late_path) == study_id
    (h2,) = make_stable(session_factory)
    assert h2.revision == h1.revision + 1
    r2 = triage_study(session_factory, settings, tiny_classifier, study_id, h2.revision)
    with session_factory() as session:
        a, b = (session.get(TriageResult, r.result_id) for r in (r1, r2))
        assert a.sr_sop_instance_uid != b.sr_sop_instance_uid
        assert len(b.images) == 2
    second = pydicom.dcmread(b.sr_path)
    (pred_study,) = second.PredecessorDocumentsSequence
    refs = pred_study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [a.sr_sop_instance_uid]
    out = subprocess.run(["dciodvfy", b.sr_path], capture_output=True, text=True, check=False)
    assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]


def test_nothing_eligible_is_not_evaluated_with_reasons(
    session_factory,
    settings,
    ingest,
    shared_data: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """A lateral, a non-chest image and a non-image in one study: not evaluated."""
    lateral = pydicom.dcmread(
        shared_data / DICOM / "real/fujifilm_DX_thorax_lateral_veterinary.dcm"
    )
    study_uid = str(lateral.StudyInstanceUID)
    paths = [shared_data / DICOM / "real/fujifilm_DX_thorax_lateral_veterinary.dcm"]
    for name in ("real/RG3_J2KI.dcm", "other/orthanc_sample-pdf.dcm"):
        ds = pydicom.dcmread(shared_data / DICOM / name)
        ds.StudyInstanceUID = study_uid
        ds.PatientID = lateral.get("PatientID", "")  # one patient's study (else it is held)
        out = tmp_path / Path(name).name
        ds.save_as(out)
        paths.append(out)
    for path in paths:
        study_id = ingest(path)

    def no_model() -> None:
        raise AssertionError("the model must not be loaded for a study with nothing eligible")

    (handoff,) = make_stable(session_factory)
    out = triage_study(session_factory, settings, no_model, study_id, handoff.revision)
    assert out.status == "not_evaluated" and out.decision is None and out.deliveries == ()
    with session_factory() as session:
        result = session.get(TriageResult, out.result_id)
        assert result.decision is None and result.sr_path is None
        assert result.priority == Priority.NOT_EVALUATED
        reasons = sorted(i.reason.split(":")[0] for i in result.images)
        assert reasons == ["lateral_view", "not_an_image", "not_chest"]
        assert "no eligible image" in result.reason
        assert session.get(Study, study_id).state == "not_evaluated"


def test_undecodable_image_is_recorded(
    session_factory,
    settings,
    tiny_classifier,
    ingest,
    shared_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    study_id = ingest(shared_data / DICOM / "torture/canon_DX_chest_966_badCOM.dcm")
    (handoff,) = make_stable(session_factory)
    out = triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision)
    assert out.status == "not_evaluated"
    with session_factory() as session:
        (image,) = session.get(TriageResult, out.result_id).images
        assert image.reason.startswith("cannot_decode")


def test_a_revision_that_keeps_killing_workers_is_failed(
    session_factory,
    settings,
    tiny_classifier,
    ingest,
    shared_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    study_id = ingest(shared_data / DICOM / "real/fuji_CR_chest_from_fodicom_withmeta.dcm")
    (handoff,) = make_stable(session_factory)
    with session_factory.begin() as session:
        session.add(
            TriageClaim(
                study_id=study_id,
                revision=handoff.revision,
                claimed_by="x:1",
                claimed_at=session.get(Study, study_id).stable_at,
                attempts=MAX_ATTEMPTS,
            )
        )
    out = triage_study(session_factory, settings, tiny_classifier, study_id, handoff.revision)
    assert out.status == "failed"


class _CountingSession:
    """An ONNX Runtime session that counts its runs."""

    def __init__(self, session) -> None:  # type: ignore[no-untyped-def]
        self.session, self.runs = session, 0

    def run(self, outputs, feeds):  # type: ignore[no-untyped-def]
        self.runs += 1
        return self.session.run(outputs, feeds)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.session, name)


def test_abnormal_study_gets_the_cam_heatmap_of_the_same_run(
    session_factory,
    ingest,
    shared_data: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The shipped model declares a ``cam`` output: one inference gives the logit and the
    map, and the stored heatmap is that map (no occlusion runs)."""
    import numpy as np

    from models.cam_output import cam_heatmap
    from models.preprocess import preprocess_dataset
    from models.runtime import Classifier, default_model_path
    from worklist.heatmaps import heatmap_path, load_heatmap

    loaded = Classifier.load(default_model_path(), ["CPUExecutionProvider"])
    assert loaded.has_cam
    counting = _CountingSession(loaded.session)
    clf = Classifier(counting, loaded.card, loaded.path)
    path = shared_data / DICOM / "real/RG1_from_J2KI_explicit.dcm"
    study_id = ingest(path)
    (handoff,) = make_stable(session_factory)
    settings = load_settings(data_dir=tmp_path / "data", destinations="PACS@127.0.0.1:11999")
    out = triage_study(session_factory, settings, clf, study_id, handoff.revision)
    assert out.decision == "abnormal"
    assert counting.runs == 1
    ds = pydicom.dcmread(path)
    stored = load_heatmap(
        heatmap_path(settings.data_dir, str(ds.StudyInstanceUID), 1, str(ds.SOPInstanceUID))
    )
    assert stored is not None and stored.shape == (8, 8) and stored.max() == 1.0
    _logits, cam = loaded.predict_with_cam(preprocess_dataset(ds, loaded.card.preprocess_spec))
    np.testing.assert_allclose(stored, cam_heatmap(cam[0]), atol=2e-3)  # stored as float16
