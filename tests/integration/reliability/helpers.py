"""Helpers of the reliability suite: studies of small chest radiographs with fresh
UIDs and known patient identity, and the end-state check every fault test makes:
every acknowledged instance ends in exactly one triage result (per study revision)
and exactly one delivered SR at the PACS."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, select

from tests.conftest import wait_until
from tests.integration.scp.helpers import DCMTK_TIMEOUT_S
from worklist.tables import Delivery, Study, TriageImage, TriageResult

CHEST = Path("dicom") / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"
#: Patient identity written into every generated instance; no log may contain it.
PATIENT_NAME = "Zzyzx^Quintessa^Reliability"
PATIENT_ID = "PHI-7C1D9E42"
#: After the last expected SR, the PACS must stay at the expected count this long,
#: so that a late duplicate (a redelivered task, a second sweep) would be seen.
QUIET_S = 3.0


@dataclass(frozen=True)
class SentStudy:
    """One generated study: its UID and its instances (path, SOP Instance UID)."""

    study_uid: str
    files: tuple[Path, ...]
    sop_uids: tuple[str, ...]


def make_studies(
    shared_data: Path,
    directory: Path,
    n_studies: int,
    per_study: int,
    *,
    size: int = 128,
) -> list[SentStudy]:
    """``n_studies`` studies of ``per_study`` frontal CR instances each: a real chest
    radiograph downscaled to about ``size`` pixels (16-bit), explicit VR little
    endian, fresh UIDs, the patient identity of :data:`PATIENT_NAME`/:data:`PATIENT_ID`."""
    ds = pydicom.dcmread(shared_data / CHEST)
    pixels = ds.pixel_array
    step = max(1, int(np.ceil(max(pixels.shape) / size)))
    small = np.ascontiguousarray(pixels[::step, ::step]).astype(np.uint16)
    ds.PixelData = small.tobytes()
    ds.Rows, ds.Columns = small.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.SeriesNumber = 1
    studies = []
    for s in range(n_studies):
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.AccessionNumber = f"REL{s:06d}"
        folder = directory / f"study-{s:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        files, uids = [], []
        for i in range(per_study):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
            path = folder / f"{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            uids.append(str(ds.SOPInstanceUID))
        studies.append(SentStudy(str(ds.StudyInstanceUID), tuple(files), tuple(uids)))
    return studies


def send(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu, explicit VR little endian, stop at the first failure (no -nh)."""
    cmd = ["storescu", "-aet", "MODALITY", "-aec", "TRIAGE", "-to", "20", "-xe", *options]
    cmd += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, check=False)


@dataclass
class Outcome:
    """What :func:`wait_exactly_once` found."""

    seconds: float
    results: int
    revisions: dict[str, list[int]]


def _snapshot(engine: Any, study_uids: list[str]) -> dict[str, Any]:
    with engine.connect() as conn:
        studies = {
            r.study_instance_uid: r
            for r in conn.execute(
                select(Study.id, Study.study_instance_uid, Study.revision, Study.state).where(
                    Study.study_instance_uid.in_(study_uids)
                )
            )
        }
        ids = [s.id for s in studies.values()]
        results = conn.execute(
            select(
                TriageResult.id,
                TriageResult.study_id,
                TriageResult.revision,
                TriageResult.status,
                TriageResult.reason,
                TriageResult.sr_sop_instance_uid,
            ).where(TriageResult.study_id.in_(ids))
        ).all()
        deliveries = conn.execute(
            select(Delivery.result_id, Delivery.state, Delivery.sop_instance_uid).where(
                Delivery.result_id.in_([r.id for r in results])
            )
        ).all()
        images = conn.execute(
            select(TriageImage.result_id, TriageImage.sop_instance_uid, TriageImage.evaluated)
            .where(TriageImage.result_id.in_([r.id for r in results]))
        ).all()  # fmt: skip
    return {"studies": studies, "results": results, "deliveries": deliveries, "images": images}


def wait_exactly_once(
    database_url: str,
    pacs: Any,
    sent: list[SentStudy],
    *,
    timeout: float = 120,
    started: float | None = None,
    only: bool = True,
) -> Outcome:
    """Wait until every study in ``sent`` has a result for its current revision and
    every SR is delivered, hold :data:`QUIET_S`, then check exactly-once:

    - at most one result per (study, revision) and one for the current revision,
      ``triaged``, whose images include every instance sent for the study;
    - one outbox row per SR, ``delivered``; each SR SOP Instance UID exactly once
      at the PACS (storescp ``+uf``: a duplicate C-STORE is a second file), and
      (``only``) nothing else there.
    """
    from worklist.core.db import make_engine

    engine = (
        make_engine(database_url) if "postgresql" in database_url else create_engine(database_url)
    )
    uids = [s.study_uid for s in sent]
    started = time.monotonic() if started is None else started
    try:

        def done() -> dict[str, Any] | None:
            snap = _snapshot(engine, uids)
            if len(snap["studies"]) < len(uids):
                return None
            current = {(s.id, s.revision) for s in snap["studies"].values()}
            have = {(r.study_id, r.revision) for r in snap["results"]}
            if not current <= have:
                return None
            if any(d.state != "delivered" for d in snap["deliveries"]):
                return None
            n_srs = sum(1 for r in snap["results"] if r.sr_sop_instance_uid)
            return snap if pacs.count() >= n_srs else None

        wait_until(done, timeout=timeout, interval=0.25, what="every study triaged and delivered")
        seconds = time.monotonic() - started
        hold = time.monotonic() + QUIET_S
        while time.monotonic() < hold:
            time.sleep(0.25)
        snap = _snapshot(engine, uids)
    finally:
        engine.dispose()

    by_study = {s.study_uid: s for s in sent}
    per_revision = Counter((r.study_id, r.revision) for r in snap["results"])
    assert max(per_revision.values()) == 1, per_revision
    revisions: dict[str, list[int]] = {}
    for uid, study in snap["studies"].items():
        mine = [r for r in snap["results"] if r.study_id == study.id]
        revisions[uid] = sorted(r.revision for r in mine)
        (last,) = [r for r in mine if r.revision == study.revision]
        assert last.status == "triaged", (uid, last.status, last.reason)
        seen = {i.sop_instance_uid for i in snap["images"] if i.result_id == last.id}
        assert set(by_study[uid].sop_uids) <= seen, f"study {uid}: instances missing from result"
    srs = [r.sr_sop_instance_uid for r in snap["results"] if r.sr_sop_instance_uid]
    per_result = Counter(d.result_id for d in snap["deliveries"])
    assert all(per_result[r.id] == 1 for r in snap["results"] if r.sr_sop_instance_uid)
    assert all(d.state == "delivered" for d in snap["deliveries"])
    at_pacs = Counter(pacs.sr_uids())
    if not only:
        at_pacs = Counter({uid: n for uid, n in at_pacs.items() if uid in set(srs)})
    assert at_pacs == Counter(srs), (
        f"SRs at the PACS {sum(at_pacs.values())} (distinct {len(at_pacs)}), expected "
        f"{len(srs)}; duplicates: {[u for u, n in at_pacs.items() if n > 1][:5]}"
    )
    return Outcome(seconds, len(snap["results"]), revisions)


def wait_all_srs_once(database_url: str, pacs: Any, *, timeout: float = 60) -> int:
    """Wait until every outbox row in the database is delivered and the PACS holds
    as many files as there are SRs, hold :data:`QUIET_S`, then check that each SR
    of the database is at the PACS exactly once and nothing else is. Returns the
    number of SRs."""
    from worklist.core.db import make_engine

    engine = make_engine(database_url)
    try:

        def srs() -> list[str] | None:
            with engine.connect() as conn:
                states = conn.scalars(select(Delivery.state)).all()
                uids = conn.scalars(
                    select(TriageResult.sr_sop_instance_uid).where(
                        TriageResult.sr_sop_instance_uid.is_not(None)
                    )
                ).all()
            if any(s != "delivered" for s in states) or pacs.count() < len(uids):
                return None
            return list(uids)

        wait_until(srs, timeout=timeout, interval=0.25, what="every SR delivered")
        hold = time.monotonic() + QUIET_S
        while time.monotonic() < hold:
            time.sleep(0.25)
        expected = srs() or []
    finally:
        engine.dispose()
    assert Counter(pacs.sr_uids()) == Counter(expected)
    return len(expected)


def assert_no_phi(logs: str) -> None:
    """Neither the patient's name (whole or any component) nor the ID in ``logs``."""
    for secret in (PATIENT_ID, PATIENT_NAME, *PATIENT_NAME.split("^")):
        assert secret not in logs, f"{secret!r} written to a log"
