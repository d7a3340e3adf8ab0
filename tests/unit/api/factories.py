"""Test data for the API and web tests: studies with triage results and real DICOM files."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session

from worklist.core.clock import utcnow
from worklist.tables import Delivery, Instance, Series, Study, TriageImage, TriageResult

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def write_dicom(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str = "DX",
    view: str = "PA",
    size: int = 64,
) -> Path:
    """Write a small, valid greyscale DICOM image (a bright disc on a gradient)."""
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = xx * 40 + ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2) * 1500
    pixels = pixels.astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.ViewPosition = view
    ds.PatientName = "TEST^PATIENT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Made:
    """What :func:`make_study` created."""

    study: Study
    result: TriageResult | None
    sop_uids: list[str] = field(default_factory=list)


def make_study(
    session: Session,
    spool: Path,
    *,
    name: str,
    priority: int | None,
    decision: str | None = None,
    probability: float | None = None,
    waited: timedelta = timedelta(minutes=5),
    modality: str = "DX",
    sex: str = "F",
    age: str = "054Y",
    study_date: str = "20261123",
    description: str = "CHEST PA",
    requested_priority: str | None = None,
    lateral: bool = True,
    delivery_state: str = "delivered",
    finished_after: timedelta = timedelta(seconds=20),
) -> Made:
    """Insert a study (frontal + optional lateral image) and, when ``priority`` is not
    None, a triage result that evaluated the frontal and skipped the lateral."""
    now = utcnow()
    received = now - waited
    study_uid, series_uid = generate_uid(), generate_uid()
    study = Study(
        study_instance_uid=study_uid,
        patient_id=f"ID-{name}",
        patient_name=f"{name}^TEST",
        patient_sex=sex,
        patient_age=age,
        accession_number=f"ACC-{name}",
        study_date=study_date,
        study_description=description,
        requested_priority=requested_priority,
        state="triaged" if priority is not None else "queued",
        revision=1,
        instance_count=0,
        first_received_at=received,
        last_received_at=received,
    )
    session.add(study)
    session.flush()
    series = Series(
        study_id=study.id,
        series_instance_uid=series_uid,
        modality=modality,
        series_number="1",
        series_description="CHEST",
    )
    session.add(series)
    session.flush()
    views = ["PA", "LL"] if lateral else ["PA"]
    instances = []
    for view in views:
        sop = generate_uid()
        path = write_dicom(
            spool / study_uid / f"{sop}.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop,
            modality=modality,
            view=view,
        )
        inst = Instance(
            study_id=study.id,
            series_id=series.id,
            sop_instance_uid=sop,
            sop_class_uid=DX_STORAGE,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            modality=modality,
            view_position=view,
            rows=64,
            columns=64,
            patient_sex=sex,
            patient_age=age,
            received_at=received,
            receive_count=1,
            file_path=str(path),
            size_bytes=path.stat().st_size,
        )
        session.add(inst)
        instances.append(inst)
    study.instance_count = len(instances)
    session.flush()
    result = None
    if priority is not None:
        finished = received + finished_after
        result = TriageResult(
            study_id=study.id,
            revision=1,
            status="triaged" if decision else "not_evaluated",
            decision=decision,
            probability=probability,
            score=probability,
            aggregation="max",
            operating_point="balanced",
            threshold=0.5,
            model_name="cxr-triage-test",
            model_version="1.0.0",
            model_sha256="ab" * 32,
            model_manufacturer="test",
            providers="CPUExecutionProvider",
            priority=priority,
            priority_reason="test rule",
            queued_at=received + timedelta(seconds=10),
            started_at=finished - timedelta(seconds=1),
            finished_at=finished,
        )
        session.add(result)
        session.flush()
        session.add(
            TriageImage(
                result_id=result.id,
                instance_id=instances[0].id,
                sop_instance_uid=instances[0].sop_instance_uid,
                evaluated=True,
                logit=0.0,
                probability=probability,
            )
        )
        if lateral:
            session.add(
                TriageImage(
                    result_id=result.id,
                    instance_id=instances[1].id,
                    sop_instance_uid=instances[1].sop_instance_uid,
                    evaluated=False,
                    reason="view position LL is not frontal",
                )
            )
        session.add(
            Delivery(
                result_id=result.id,
                destination="PACS@127.0.0.1:104",
                sop_instance_uid=generate_uid(),
                file_path="/nonexistent/sr.dcm",
                state=delivery_state,
                attempts=1,
                next_attempt_at=finished,
                created_at=finished,
                updated_at=finished,
                delivered_at=finished if delivery_state == "delivered" else None,
            )
        )
        session.flush()
    return Made(study, result, [i.sop_instance_uid for i in instances])


def seed_worklist(session: Session, spool: Path) -> dict[str, Made]:
    """A worklist of five studies in a known priority order (and one completed)."""
    made = {
        "normal_old": make_study(
            session,
            spool,
            name="NORMALOLD",
            priority=50,
            decision="normal",
            probability=0.08,
            waited=timedelta(minutes=40),
            sex="M",
            age="035Y",
        ),
        "normal_new": make_study(
            session,
            spool,
            name="NORMALNEW",
            priority=50,
            decision="normal",
            probability=0.12,
            waited=timedelta(minutes=5),
            modality="CR",
            study_date="20261120",
        ),
        "abnormal": make_study(
            session,
            spool,
            name="ABNORMAL",
            priority=30,
            decision="abnormal",
            probability=0.71,
            waited=timedelta(minutes=10),
            age="072Y",
        ),
        "abnormal_high": make_study(
            session,
            spool,
            name="ABNHIGH",
            priority=20,
            decision="abnormal",
            probability=0.96,
            waited=timedelta(minutes=2),
            sex="M",
            age="081Y",
            delivery_state="failed",
        ),
        "pending": make_study(
            session, spool, name="PENDING", priority=None, waited=timedelta(minutes=1)
        ),
        "overdue": make_study(
            session,
            spool,
            name="OVERDUE",
            priority=50,
            decision="normal",
            probability=0.2,
            waited=timedelta(minutes=90),
            age="009Y",
        ),
    }
    session.commit()
    return made
