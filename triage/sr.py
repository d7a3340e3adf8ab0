"""The DICOM SR the node writes for a triaged study (highdicom, TID 1500).

Structure (Comprehensive SR Storage, a *Measurement Report*, TID 1500)::

    Imaging Measurement Report (DCM 126000)
    ├── Language, Observation Context: device observer = this node (TID 1004)
    ├── Procedure Reported: Plain chest X-ray (SCT 399208008)
    ├── Image Library: every evaluated image (TID 1600)
    └── Imaging Measurements
        └── Measurement Group (TID 1501), tracking id "CXR triage", UID per revision
            ├── Algorithm Identification (TID 4019): name, version, manufacturer,
            │   parameters ["operating point: <name>", "threshold: <t>", "model sha256: ...",
            │   "intended population: ..." and "warning: <patient outside it>" when known]
            ├── Source images for the group: the evaluated images
            ├── Qualitative evaluation  Finding (DCM 121071) = Abnormal (SCT 263654008)
            │                                                 | Normal (SCT 17621005)
            ├── Qualitative evaluation  Operating point (99CXRTRIAGE OP) = <name>
            ├── Measurement  Probability of abnormal finding (99CXRTRIAGE PROB-ABN), unit 1
            └── Measurement  Decision threshold (99CXRTRIAGE THR-ABN), unit 1

Patient and study attributes are copied from the source images (highdicom copies
them from the evidence). The SR has its own series. Its Series and SOP Instance
UIDs are derived from a hash of (Study Instance UID, triage revision), so a retried
task writes the same SR again, never a second, different one, and a re-triage after
a late instance (a new revision) gets new UIDs.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom import Dataset, dcmread
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM

from worklist.core.files import fsync_directory

__all__ = [
    "CODES",
    "SRContent",
    "build_sr",
    "clean_evidence",
    "derived_uid",
    "read_sr_summary",
    "sr_uids",
    "write_sr",
]

log = logging.getLogger(__name__)

PRIVATE_SCHEME = "99CXRTRIAGE"


class CODES:
    """The codes the SR uses (SNOMED CT, DICOM, UCUM and the node's private scheme)."""

    abnormal = Code("263654008", "SCT", "Abnormal")
    normal = Code("17621005", "SCT", "Normal")
    finding = Code("121071", "DCM", "Finding")
    procedure = Code("399208008", "SCT", "Plain chest X-ray")
    probability = Code("PROB-ABN", PRIVATE_SCHEME, "Probability of abnormal finding")
    threshold = Code("THR-ABN", PRIVATE_SCHEME, "Decision threshold")
    operating_point = Code("OP", PRIVATE_SCHEME, "Operating point")
    unitless = Code("1", "UCUM", "no units")


SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI triage CXR (not for diagnosis)"


@dataclass(frozen=True)
class SRContent:
    """What goes into the SR of one triage revision.

    Attributes
    ----------
    study_instance_uid : str
    revision : int
    decision : str
        ``abnormal`` or ``normal``.
    probability : float
        Calibrated probability of abnormal.
    threshold : float
    operating_point : str
    model_name, model_version, model_sha256, manufacturer : str
    device_name : str
        The node's AE title (observer device name).
    content_datetime : datetime
        Content Date/Time (the result's finish time; fixed so re-writes are equal).
    intended_population : str
        Who the model is for, from its card ("" when the card does not say).
    population_warning : str
        Why this patient is outside that population ("" when inside or unknown).
    """

    study_instance_uid: str
    revision: int
    decision: str
    probability: float
    threshold: float
    operating_point: str
    model_name: str
    model_version: str
    model_sha256: str
    manufacturer: str
    device_name: str
    content_datetime: datetime
    intended_population: str = ""
    population_warning: str = ""


_UID_NAMESPACE = uuid.UUID("6f1f3c1e-4a55-5b7e-9d0c-2f5a8c1e7b31")


def derived_uid(*parts: str) -> str:
    """A deterministic ``2.25`` UID: the integer of a name-based (SHA-1) UUID of ``parts``.

    Parameters
    ----------
    *parts : str

    Returns
    -------
    str
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def sr_uids(study_instance_uid: str, revision: int) -> tuple[str, str]:
    """Deterministic Series and SOP Instance UIDs of the SR of a study revision.

    Parameters
    ----------
    study_instance_uid : str
    revision : int

    Returns
    -------
    tuple of str
        ``(series_instance_uid, sop_instance_uid)``, both ``2.25.<hash>`` UIDs.
    """
    base = ("sr", study_instance_uid, str(int(revision)))
    return derived_uid(*base, "series"), derived_uid(*base, "instance")


def _device_uid(device_name: str) -> str:
    return derived_uid("device", device_name)


def build_sr(
    content: SRContent,
    evidence: Sequence[Dataset],
    previous: Sequence[Dataset] | None = None,
) -> ComprehensiveSR:
    """Build the SR of a triaged study.

    Parameters
    ----------
    content : SRContent
        Decision, probability, operating point and provenance.
    evidence : sequence of pydicom.dataset.Dataset
        Headers of the evaluated images (same study; pixel data not needed).
    previous : sequence of pydicom.dataset.Dataset, optional
        The node's SRs of earlier revisions of the study, which this one
        supersedes (listed in the Predecessor Documents Sequence).

    Returns
    -------
    highdicom.sr.ComprehensiveSR

    Raises
    ------
    ValueError
        When ``evidence`` is empty, from another study, or the decision is unknown.
    """
    if not evidence:
        raise ValueError("an SR needs at least one evaluated image")
    if content.decision not in ("abnormal", "normal"):
        raise ValueError(f"decision must be 'abnormal' or 'normal', not {content.decision!r}")
    for ds in evidence:
        if str(ds.StudyInstanceUID) != content.study_instance_uid:
            raise ValueError("every evaluated image must belong to the reported study")
    evidence = [clean_evidence(ds) for ds in evidence]
    series_uid, sop_uid = sr_uids(content.study_instance_uid, content.revision)
    algorithm = AlgorithmIdentification(
        name=content.model_name,
        version=content.model_version,
        manufacturer=content.manufacturer,
        parameters=[
            f"operating point: {content.operating_point}",
            f"threshold: {content.threshold:.6g}",
            f"model sha256: {content.model_sha256}",
            *(
                [f"intended population: {content.intended_population}"]
                if content.intended_population
                else []
            ),
            *([f"warning: {content.population_warning}"] if content.population_warning else []),
        ],
    )
    finding = CODES.abnormal if content.decision == "abnormal" else CODES.normal
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid("tracking", content.study_instance_uid, str(content.revision)),
            identifier="CXR triage",
        ),
        algorithm_id=algorithm,
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            )
            for ds in evidence
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(name=CODES.finding, value=finding),
            QualitativeEvaluation(
                name=CODES.operating_point,
                value=Code(content.operating_point[:16], PRIVATE_SCHEME, content.operating_point),
            ),
        ],
        measurements=[
            Measurement(
                name=CODES.probability,
                value=round(float(content.probability), 6),
                unit=CODES.unitless,
            ),
            Measurement(
                name=CODES.threshold,
                value=round(float(content.threshold), 6),
                unit=CODES.unitless,
            ),
        ],
    )
    observer = ObserverContext(
        observer_type=CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=_device_uid(content.device_name),
            name=content.device_name,
            manufacturer_name=content.manufacturer,
            model_name=content.model_name,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=CODES.procedure,
        imaging_measurements=[group],
        referenced_images=_library_images(evidence) or None,
    )
    sr = ComprehensiveSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=int(content.revision),
        manufacturer=content.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=list(previous) if previous else None,
        series_description=SERIES_DESCRIPTION,
    )
    when = content.content_datetime
    sr.ContentDate = DA(when.strftime("%Y%m%d"))
    sr.ContentTime = TM(when.strftime("%H%M%S.%f"))
    sr.InstanceCreationDate = sr.ContentDate
    sr.InstanceCreationTime = sr.ContentTime
    sr.SeriesDate = sr.ContentDate
    sr.SeriesTime = sr.ContentTime
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    sr.SoftwareVersions = f"{content.model_name} {content.model_version}"[:64]
    institution = getattr(evidence[0], "InstitutionName", None)
    if institution:
        sr.InstitutionName = institution
    elif "InstitutionName" in sr:
        del sr.InstitutionName
    _add_private_coding_scheme(sr)
    return sr


_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_EVIDENCE_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "InstitutionName",
)


def clean_evidence(ds: Dataset) -> Dataset:
    """A copy of the patient/study/instance attributes the SR copies, made valid (the
    heatmap Secondary Captures copy the same, :mod:`triage.heatmap_sc`).

    Type 2 attributes the source lacks become empty; values that break their VR
    (``1993.02.24`` as a date) are emptied rather than copied into the SR.
    """
    copy = Dataset()
    for keyword in _EVIDENCE_KEYWORDS:
        setattr(copy, keyword, ds.get(keyword))  # present, empty when the source lacks it
    for keyword, pattern in (("PatientBirthDate", _DA), ("StudyDate", _DA), ("StudyTime", _TM)):
        value = str(copy.get(keyword) or "")
        if value and not pattern.match(value):
            setattr(copy, keyword, None)
    if str(copy.get("PatientSex") or "") not in ("", "M", "F", "O"):
        copy.PatientSex = None
    for keyword, limit in (
        ("AccessionNumber", 16),
        ("StudyID", 16),
        ("PatientID", 64),
        ("IssuerOfPatientID", 64),
        ("InstitutionName", 64),
    ):
        if len(str(copy.get(keyword) or "")) > limit:
            # An over-long identifier is invalid; an altered one would be wrong.
            setattr(copy, keyword, None)
    for keyword in ("IssuerOfPatientID", "InstitutionName", "ReferringPhysicianName"):
        if copy.get(keyword) in (None, ""):
            del copy[keyword]
    # Text is held decoded; write it again as UTF-8 when it is not plain ASCII.
    for keyword in ("PatientName", "ReferringPhysicianName"):
        if copy.get(keyword) not in (None, ""):
            setattr(copy, keyword, str(copy.get(keyword)))
    del copy["SpecificCharacterSet"]
    texts = [str(elem.value) for elem in copy if elem.value is not None]
    if any(not text.isascii() for text in texts):
        copy.SpecificCharacterSet = "ISO_IR 192"
    return copy


_LIBRARY_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "PatientOrientation",
    "ImagerPixelSpacing",
    "ImageLaterality",
    "ViewPosition",
    "StudyDate",
    "StudyTime",
    "ContentDate",
    "ContentTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "FrameOfReferenceUID",
)


def _library_images(evidence: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the images that can be described in the TID 1600 image library.

    highdicom's projection radiography descriptors (TID 1603) need Patient
    Orientation and Imager Pixel Spacing (Pixel Spacing is used when the latter is
    absent); an image lacking them is left out of the library (it is still
    referenced by the measurement group and the evidence sequence).
    """
    images: list[Dataset] = []
    for ds in evidence:
        copy = Dataset()
        for keyword in _LIBRARY_KEYWORDS:
            value = ds.get(keyword)
            if value not in (None, ""):
                setattr(copy, keyword, value)
        if "ImagerPixelSpacing" not in copy and ds.get("PixelSpacing"):
            copy.ImagerPixelSpacing = ds.PixelSpacing
        orientation = copy.get("PatientOrientation")
        if (
            orientation is None
            or len(orientation) != 2
            or not all(str(v) for v in orientation)
            or "ImagerPixelSpacing" not in copy
            or len(copy.ImagerPixelSpacing) != 2
        ):
            log.debug("image %s left out of the SR image library", ds.get("SOPInstanceUID"))
            continue
        images.append(copy)
    return images


def _add_private_coding_scheme(sr: Dataset) -> None:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "cxr-triage-node private codes"
    item.CodingSchemeResponsibleOrganization = "cxr-triage-node project"
    sr.CodingSchemeIdentificationSequence = [item]


def write_sr(sr: Dataset, results_dir: Path) -> Path:
    """Write an SR to ``results_dir/<SOP Instance UID>.dcm`` atomically and durably.

    Temporary file, fsync, rename, fsync of the directory. The name depends only
    on the SR's UID, so writing the same revision twice replaces the file with the
    same object.

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
    results_dir : pathlib.Path

    Returns
    -------
    pathlib.Path
    """
    import os

    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{sr.SOPInstanceUID}.dcm"
    tmp = path.with_name(path.name + ".tmp")
    try:
        sr.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_directory(results_dir)  # the new name survives a power cut too
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial SR behind
        raise
    return path


def read_sr_summary(path: str | Path) -> dict[str, object]:
    """Read back the values the node writes into its SR (the inverse of :func:`build_sr`).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        ``sop_instance_uid``, ``study_instance_uid``, ``finding`` (``abnormal`` /
        ``normal``), ``probability``, ``threshold``, ``operating_point``,
        ``algorithm_name``, ``algorithm_version``, ``referenced_sop_instance_uids``.
    """
    ds = dcmread(path)
    summary: dict[str, object] = {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "patient_id": str(ds.get("PatientID", "")),
        "referenced_sop_instance_uids": sorted(
            str(ref.ReferencedSOPInstanceUID)
            for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ),
    }

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            key = (str(name.CodingSchemeDesignator), str(name.CodeValue)) if name else None
            if item.ValueType == "CODE" and key == ("DCM", "121071"):
                value = str(item.ConceptCodeSequence[0].CodeValue)
                summary["finding"] = {"263654008": "abnormal", "17621005": "normal"}.get(
                    value, value
                )
            elif item.ValueType == "CODE" and key == (PRIVATE_SCHEME, "OP"):
                summary["operating_point"] = str(item.ConceptCodeSequence[0].CodeMeaning)
            elif item.ValueType == "NUM" and key == (PRIVATE_SCHEME, "PROB-ABN"):
                summary["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "NUM" and key == (PRIVATE_SCHEME, "THR-ABN"):
                summary["threshold"] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "TEXT" and key == ("DCM", "111001"):
                summary["algorithm_name"] = str(item.TextValue)
            elif item.ValueType == "TEXT" and key == ("DCM", "111003"):
                summary["algorithm_version"] = str(item.TextValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return summary
