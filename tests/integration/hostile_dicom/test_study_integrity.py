"""Issue 13 points 5 and 6, against a real ``triage-node scp`` fed by dcmtk storescu.

5. An instance of another patient (other PatientID, same StudyInstanceUID) does not
   join the study silently: the study is held (``patient_mismatch``), is not queued
   for triage however long it stays quiet, the worklist says why, and
   ``triage-node study release`` lets it be triaged.
6. A known SOP Instance UID re-sent with other content: identical content stays a
   no-op; other content is stored as a new version (the previous one kept), logged,
   and re-opens the study (a new triage revision); with
   ``TRIAGE_RESENT_INSTANCE_POLICY=refuse`` it is refused with 0xC004 instead.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.conftest import wait_until
from tests.integration.deploy.helpers import TRIAGE_NODE
from tests.integration.reliability.helpers import PATIENT_ID, make_studies
from worklist.queries import list_worklist
from worklist.tables import Instance, Study
from worklist.views import WorklistFilters

STORESCU = "/usr/bin/storescu"
STABLE_S = 1.0


def _store(port: int, *paths: Path) -> subprocess.CompletedProcess[str]:
    cmd = [STORESCU, "-v", "-nh", "-xe", "-aet", "MODALITY", "-aec", "TRIAGE", "-to", "20"]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _study(url: str, uid: str) -> Any:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return session.execute(
                select(Study.state, Study.revision, Study.instance_count).where(
                    Study.study_instance_uid == uid
                )
            ).one_or_none()
    finally:
        engine.dispose()


def _pixels(path: Path) -> bytes:
    return bytes(pydicom.dcmread(path).PixelData)


def _variant(source: Path, target: Path, **changes: Any) -> Path:
    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


def test_another_patients_instance_holds_the_study(
    tmp_path: Path, shared_data: Path, scp_node: Any
) -> None:
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1)
    foreign = _variant(
        study.files[0],
        tmp_path / "foreign.dcm",
        SOPInstanceUID=generate_uid(),
        PatientID="OTHER-PATIENT-77",
        PatientName="Other^Patient",
    )
    node = scp_node(stable_seconds=STABLE_S)
    out = _store(node.port, study.files[0], foreign)
    assert out.returncode == 0, out.stderr[-2000:]  # both stored: nothing acknowledged is lost

    wait_until(
        lambda: _study(node.database_url, study.study_uid) is not None,
        timeout=10,
        what="the study row",
    )
    time.sleep(STABLE_S * 4)  # well past the quiet period: a normal study is queued by now
    state, revision, count = _study(node.database_url, study.study_uid)
    assert (state, revision, count) == ("patient_mismatch", 0, 2)
    log = node.log()
    assert "another Patient ID than its study" in log
    assert "OTHER-PATIENT-77" not in log and PATIENT_ID not in log

    # The worklist row says why.
    engine = create_engine(node.database_url)
    try:
        with Session(engine) as session:
            rows = list_worklist(
                session,
                filters=WorklistFilters(),
                now=datetime.now(UTC),
                wait_cap=timedelta(hours=1),
            )
    finally:
        engine.dispose()
    (row,) = [r for r in rows if r.study_instance_uid == study.study_uid]
    assert row.state == "patient_mismatch"
    assert row.state_reason and "another Patient ID" in row.state_reason

    # An administrator releases it: it is triaged (queued) once stable.
    released = subprocess.run(
        [str(TRIAGE_NODE), "study", "release", study.study_uid],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert released.returncode == 0, released.stderr
    wait_until(
        lambda: _study(node.database_url, study.study_uid)[0] == "queued",
        timeout=20,
        what="the released study to be queued",
    )


def test_resent_instance_with_other_content_is_a_new_version(
    tmp_path: Path, shared_data: Path, scp_node: Any
) -> None:
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1)
    original = study.files[0]
    node = scp_node(stable_seconds=STABLE_S)
    assert _store(node.port, original).returncode == 0
    wait_until(
        lambda: (_study(node.database_url, study.study_uid) or ("",))[0] == "queued",
        timeout=20,
        what="the study queued (revision 1)",
    )
    assert _study(node.database_url, study.study_uid)[1] == 1

    # The same bytes again: idempotent, the study is not re-opened.
    assert _store(node.port, original).returncode == 0
    time.sleep(STABLE_S * 3)
    assert _study(node.database_url, study.study_uid)[:2] == ("queued", 1)

    # Other content under the same SOP Instance UID.
    ds = pydicom.dcmread(original)
    changed = _variant(original, tmp_path / "changed.dcm", PixelData=bytes(len(ds.PixelData)))
    out = _store(node.port, changed)
    assert out.returncode == 0, out.stderr[-2000:]
    wait_until(
        lambda: _study(node.database_url, study.study_uid)[:2] == ("queued", 2),
        timeout=20,
        what="the study re-opened and queued again (revision 2)",
    )
    engine = create_engine(node.database_url)
    try:
        with Session(engine) as session:
            stored = Path(session.scalars(select(Instance.file_path)).one())
    finally:
        engine.dispose()
    assert _pixels(stored) == _pixels(changed)
    kept = list((node.data_dir / "spool" / ".superseded").iterdir())
    assert [_pixels(p) == _pixels(original) for p in kept] == [True]
    assert "re-sent with other content" in node.log()


def test_resent_instance_with_other_content_refused_by_setting(
    tmp_path: Path, shared_data: Path, scp_node: Any
) -> None:
    (study,) = make_studies(shared_data, tmp_path / "send", 1, 1)
    original = study.files[0]
    node = scp_node(resent_instance_policy="refuse")
    assert _store(node.port, original).returncode == 0
    ds = pydicom.dcmread(original)
    changed = _variant(original, tmp_path / "changed.dcm", PixelData=bytes(len(ds.PixelData)))
    out = _store(node.port, changed)
    assert "Received Store Response (Error: CannotUnderstand)" in out.stderr, out.stderr[-2000:]
    assert "already stored with other content" in node.log()
    engine = create_engine(node.database_url)
    try:
        with Session(engine) as session:
            stored = Path(session.scalars(select(Instance.file_path)).one())
    finally:
        engine.dispose()
    assert _pixels(stored) == _pixels(original)
    assert _store(node.port, original).returncode == 0  # the same bytes stay welcome
