"""triage_batch: several waiting revisions triaged with one inference, each recorded on its
own (SQLite and PostgreSQL, tiny model, real chest files)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from triage.errors import TransientError
from triage.pipeline import BATCH, triage_batch, triage_study, worker_id
from triage.sr import read_sr_summary
from worklist.core.clock import utcnow
from worklist.core.settings import load_settings
from worklist.results import ClaimStatus, claim_revision
from worklist.tables import Delivery, Study, TriageClaim, TriageResult

from .conftest import make_stable

CHEST = "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm"
BROKEN = "dicom/torture/canon_DX_chest_966_badCOM.dcm"


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path):  # type: ignore[no-untyped-def]
    return load_settings(
        data_dir=tmp_path / "data", model_path=tiny_model, destinations="PACS@127.0.0.1:11999"
    )


class _Counting:
    """A classifier whose calls are recorded (the batch sizes, in order)."""

    def __init__(self, classifier) -> None:  # type: ignore[no-untyped-def]
        self.classifier, self.sizes = classifier, []

    def __call__(self):  # type: ignore[no-untyped-def]
        clf = self.classifier
        predict = clf.predict_logits

        def counted(batch):  # type: ignore[no-untyped-def]
            self.sizes.append(len(batch))
            return predict(batch)

        clf.predict_logits = counted
        return clf


def _studies(shared_data: Path, ingest, tmp_path: Path, n: int, source: str = CHEST) -> list[int]:  # type: ignore[no-untyped-def]
    """Ingest ``n`` copies of a real file, each a study of its own; return the study ids."""
    ids = []
    for i in range(n):
        ds = pydicom.dcmread(shared_data / source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = tmp_path / "copies" / f"{source.rsplit('/', 1)[-1]}-{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        ids.append(ingest(path))
    return ids


def _results(session_factory) -> dict[int, TriageResult]:  # type: ignore[no-untyped-def]
    with session_factory() as session:
        return {r.study_id: r for r in session.scalars(select(TriageResult))}


def test_waiting_revisions_are_triaged_with_one_inference_and_recorded_each(
    session_factory, settings, tiny_classifier, ingest, shared_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ids = _studies(shared_data, ingest, tmp_path, 4)
    handoffs = {h.study_id: h.revision for h in make_stable(session_factory)}
    model = _Counting(tiny_classifier)
    seen: list = []
    outcomes = triage_batch(
        session_factory,
        settings,
        model,
        ids[2],
        handoffs[ids[2]],
        batch_studies=3,
        on_outcome=seen.append,
    )
    assert seen == outcomes  # each handed over as soon as it was recorded
    # one call scores the three studies (the tiny model's occlusion heatmaps follow)
    assert model.sizes[0] == 3
    assert outcomes[0].study_id == ids[2]
    assert len(outcomes) == 3 and all(o.claim is ClaimStatus.CLAIMED for o in outcomes)
    assert all(o.status == "triaged" and len(o.deliveries) == 1 for o in outcomes)
    results = _results(session_factory)
    assert set(results) == {o.study_id for o in outcomes}
    assert ids[3] not in results  # beyond the batch size: left for its own task
    srs = {r.sr_sop_instance_uid for r in results.values()}
    assert len(srs) == 3
    for result in results.values():
        summary = read_sr_summary(result.sr_path)
        assert summary["sop_instance_uid"] == result.sr_sop_instance_uid
        with session_factory() as session:
            study = session.get(Study, result.study_id)
            assert summary["study_instance_uid"] == study.study_instance_uid
            assert study.state == "triaged"
        out = subprocess.run(["dciodvfy", result.sr_path], capture_output=True, text=True)
        assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
    # The batched revisions' own tasks find them done (their SRs are the batch's to
    # send), and nothing is recorded twice.
    for outcome in outcomes[1:]:
        again = triage_study(
            session_factory, settings, tiny_classifier, outcome.study_id, outcome.revision
        )
        assert again.claim is ClaimStatus.DONE and again.result_id == outcome.result_id
        assert again.deliveries == ()
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TriageResult)) == 3
        assert session.scalar(select(func.count()).select_from(Delivery)) == 3


def test_a_revision_claimed_by_another_worker_is_not_batched(
    session_factory, settings, tiny_classifier, ingest, shared_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ids = _studies(shared_data, ingest, tmp_path, 3)
    handoffs = {h.study_id: h.revision for h in make_stable(session_factory)}
    with session_factory.begin() as session:
        other = claim_revision(
            session, study_id=ids[1], revision=handoffs[ids[1]], worker="elsewhere:1"
        )
    assert other.status is ClaimStatus.CLAIMED
    outcomes = triage_batch(
        session_factory, settings, tiny_classifier, ids[0], handoffs[ids[0]], batch_studies=8
    )
    assert [o.study_id for o in outcomes] == [ids[0], ids[2]]
    assert set(_results(session_factory)) == {ids[0], ids[2]}
    with session_factory() as session:
        assert session.get(Study, ids[1]).state == "triaging"
        claim = session.scalar(select(TriageClaim).where(TriageClaim.study_id == ids[1]))
        assert claim.claimed_by == "elsewhere:1" and claim.attempts == 1


def test_one_undecodable_study_does_not_fail_the_others(
    session_factory, settings, tiny_classifier, ingest, shared_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    good = _studies(shared_data, ingest, tmp_path, 2)
    (bad,) = _studies(shared_data, ingest, tmp_path, 1, source=BROKEN)
    handoffs = {h.study_id: h.revision for h in make_stable(session_factory)}
    outcomes = triage_batch(
        session_factory, settings, tiny_classifier, bad, handoffs[bad], batch_studies=8
    )
    by_study = {o.study_id: o for o in outcomes}
    assert set(by_study) == {bad, *good}
    assert by_study[bad].status == "not_evaluated" and not by_study[bad].deliveries
    assert all(by_study[g].status == "triaged" for g in good)
    with session_factory() as session:
        (image,) = session.get(TriageResult, by_study[bad].result_id).images
        assert image.reason.startswith("cannot_decode")


def _claim_for(session_factory, study_id: int, revision: int, claimed_by: str) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        session.get(Study, study_id).state = "triaging"
        session.add(
            TriageClaim(
                study_id=study_id,
                revision=revision,
                claimed_by=claimed_by,
                claimed_at=utcnow(),
                attempts=1,
            )
        )


def test_a_revision_in_a_live_batch_is_left_to_it_and_taken_over_when_it_died(
    session_factory, settings, tiny_classifier, ingest, shared_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    live, dead, plain = _studies(shared_data, ingest, tmp_path, 3)
    handoffs = {h.study_id: h.revision for h in make_stable(session_factory)}
    host = socket.gethostname()
    _claim_for(session_factory, live, handoffs[live], f"{BATCH}{host}:{os.getppid()}")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _claim_for(session_factory, dead, handoffs[dead], f"{BATCH}{host}:{gone.pid}")
    # not a batch's claim: taken over at once (a redelivered message), as before
    _claim_for(session_factory, plain, handoffs[plain], f"{host}:{os.getppid()}")

    held = triage_study(session_factory, settings, tiny_classifier, live, handoffs[live])
    assert held.claim is ClaimStatus.HELD and held.result_id is None
    for study_id in (dead, plain):
        out = triage_study(session_factory, settings, tiny_classifier, study_id, handoffs[study_id])
        assert out.claim is ClaimStatus.CLAIMED and out.status == "triaged"
    assert set(_results(session_factory)) == {dead, plain}
    with session_factory() as session:
        claim = session.scalar(select(TriageClaim).where(TriageClaim.study_id == dead))
        assert claim.claimed_by == worker_id() and claim.attempts == 2


def test_an_error_gives_the_batched_revisions_back(
    session_factory, settings, tiny_classifier, ingest, shared_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ids = _studies(shared_data, ingest, tmp_path, 3)
    handoffs = {h.study_id: h.revision for h in make_stable(session_factory)}

    def failing(batch):  # type: ignore[no-untyped-def]
        raise TransientError("inference device busy")

    tiny_classifier.predict_logits = failing
    with pytest.raises(TransientError):
        triage_batch(
            session_factory, settings, tiny_classifier, ids[0], handoffs[ids[0]], batch_studies=8
        )
    with session_factory() as session:
        states = {i: session.get(Study, i).state for i in ids}
        attempts = {c.study_id: c.attempts for c in session.scalars(select(TriageClaim))}
    # the task's own revision stays claimed (its retry takes it again); the others wait
    assert states == {ids[0]: "triaging", ids[1]: "queued", ids[2]: "queued"}
    assert attempts == {ids[0]: 1, ids[1]: 0, ids[2]: 0}
    # their own tasks triage them
    del tiny_classifier.predict_logits
    for study_id in ids[1:]:
        out = triage_study(session_factory, settings, tiny_classifier, study_id, handoffs[study_id])
        assert out.status == "triaged"


def test_batch_size_follows_the_device_unless_set() -> None:
    from triage.inference import GPU_BATCH_STUDIES, batch_studies_for

    cpu = ["CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert batch_studies_for(None, cpu) == 1
    assert batch_studies_for(None, gpu) == GPU_BATCH_STUDIES == 8
    assert batch_studies_for(None, ["TensorrtExecutionProvider", *gpu]) == 8
    assert batch_studies_for(3, cpu) == 3 and batch_studies_for(1, gpu) == 1
