"""The heatmap of an evaluated image as a DICOM Secondary Capture, for the PACS viewer.

With ``heatmap_to_pacs`` on, the worker writes, for each evaluated image of an abnormal
study, one Secondary Capture Image Storage object (highdicom ``SCImage``): the image's
stored preview (:mod:`worklist.thumbnails`, at most 256 px: the image the study page
shows, windowed in the guarded decode child; the worker never decodes pixel data
itself) with the model's heatmap over it in red (:func:`worklist.heatmaps.overlay_rgb`)
and the words "AI heatmap, not for diagnosis" burned in. It says so in its Series
Description and Image Comments too, and Burned In Annotation is YES.

Patient and study attributes are copied from the source image (same Study Instance
UID); the heatmaps of a revision form their own series. Series and SOP Instance UIDs
are derived from (Study Instance UID, revision, source SOP Instance UID) like the SR's
(:func:`triage.sr.sr_uids`), so a retried task writes the same objects again, and
files are written like the SR (:func:`triage.sr.write_sr`: temporary file, fsync,
rename). The outbox sends them after the SR (:mod:`worklist.outbox`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from models.cam_output import cam_heatmap
from triage.sr import clean_evidence, derived_uid, write_sr
from worklist.heatmaps import LABEL, overlay_rgb
from worklist.thumbnails import thumbnail_path

__all__ = [
    "SERIES_NUMBER",
    "HeatmapImage",
    "HeatmapProvenance",
    "build_heatmap_sc",
    "burn_in_label",
    "heatmap_sc_uids",
    "write_heatmap_scs",
    "write_study_heatmap_scs",
]

log = logging.getLogger(__name__)

#: Series number of the heatmap series (the SR's is 9901).
SERIES_NUMBER = 9902
#: Conversion Type: made by software on a workstation (DICOM defined term).
CONVERSION_TYPE = "WSD"


@dataclass(frozen=True)
class HeatmapImage:
    """One evaluated image: its header, its stored preview (PNG) and its heatmap."""

    header: Dataset
    preview_png: bytes
    heatmap: np.ndarray


@dataclass(frozen=True)
class HeatmapProvenance:
    """Who made the heatmaps: the model, the node, and when."""

    model_name: str
    model_version: str
    model_sha256: str
    manufacturer: str
    device_name: str
    content_datetime: datetime
    keep_aspect: bool = False


def heatmap_sc_uids(study_instance_uid: str, revision: int, source_sop_uid: str) -> tuple[str, str]:
    """Deterministic Series and SOP Instance UIDs of the heatmap SC of one source image.

    Parameters
    ----------
    study_instance_uid : str
    revision : int
    source_sop_uid : str
        The evaluated image's SOP Instance UID.

    Returns
    -------
    tuple of str
        ``(series_instance_uid, sop_instance_uid)``; the series is the same for every
        image of the revision.
    """
    base = ("heatmap-sc", study_instance_uid, str(int(revision)))
    return derived_uid(*base, "series"), derived_uid(*base, "instance", source_sop_uid)


def _lines(text: str, fits: Callable[[str], bool]) -> list[str]:
    """``text`` broken between words into lines that fit (a word alone may not)."""
    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def burn_in_label(rgb: np.ndarray, text: str = LABEL) -> np.ndarray:
    """``rgb`` below a black band with ``text`` in white (no pixel of the image hidden).

    The font is the largest (from 8 px) at which the text fits the image's width on one
    line; a narrower image gets it on several lines.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(rows, columns, 3)`` uint8.
    text : str

    Returns
    -------
    numpy.ndarray
        ``(band + rows, columns, 3)`` uint8.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows, width = rgb.shape[:2]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(8, width // 12)
    font = ImageFont.load_default(size=size)
    while size > 8 and probe.textlength(text, font=font) > width - 4:
        size -= 1
        font = ImageFont.load_default(size=size)
    label = "\n".join(_lines(text, lambda line: probe.textlength(line, font=font) <= width - 4))
    band = int(probe.multiline_textbbox((2, 2), label, font=font)[3]) + 4
    image = Image.new("RGB", (width, band + rows), (0, 0, 0))
    image.paste(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB"), (0, band))
    ImageDraw.Draw(image).multiline_text((2, 2), label, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def build_heatmap_sc(
    image: HeatmapImage,
    provenance: HeatmapProvenance,
    *,
    revision: int,
    instance_number: int,
) -> hd.sc.SCImage:
    """The Secondary Capture of one evaluated image with its heatmap.

    Parameters
    ----------
    image : HeatmapImage
    provenance : HeatmapProvenance
    revision : int
        The triage revision (gives the UIDs).
    instance_number : int
        Position of the image in the revision's heatmap series (1-based).

    Returns
    -------
    highdicom.sc.SCImage
    """
    source = image.header
    ref = clean_evidence(source)  # patient and study attributes, made valid like the SR's
    study_uid, source_uid = str(ref.StudyInstanceUID), str(ref.SOPInstanceUID)
    series_uid, sop_uid = heatmap_sc_uids(study_uid, revision, source_uid)
    rgb = overlay_rgb(image.preview_png, image.heatmap, keep_aspect=provenance.keep_aspect)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=burn_in_label(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=int(instance_number),
        manufacturer=provenance.manufacturer,
        patient_orientation=("L", "F"),  # replaced by the source's below
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    when = provenance.content_datetime
    day, time = DA(when.strftime("%Y%m%d")), TM(when.strftime("%H%M%S.%f"))
    sc.ContentDate = sc.SeriesDate = sc.InstanceCreationDate = sc.DateOfSecondaryCapture = day
    sc.ContentTime = sc.SeriesTime = sc.InstanceCreationTime = sc.TimeOfSecondaryCapture = time
    for item in sc.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    sc.SeriesDescription = LABEL
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = CONVERSION_TYPE
    # The preview keeps the source's orientation (only resized); empty when unknown (Type 2C).
    sc.PatientOrientation = list(source.get("PatientOrientation") or [])
    if source.get("AnatomicalOrientationType"):
        sc.AnatomicalOrientationType = source.AnatomicalOrientationType
    # A chest radiograph (what the node evaluates) is of an unpaired body part: no
    # Laterality (Type 2C); the source's when it gives one, empty (unknown) for another
    # body part.
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    if source.get("Laterality") in ("R", "L"):
        sc.Laterality = source.Laterality
    elif sc.BodyPartExamined != "CHEST":
        sc.Laterality = ""
    if source.get("LossyImageCompression") == "01":  # the preview comes from lossy pixels
        sc.LossyImageCompression = "01"
    sc.ImageComments = (
        f"{LABEL}. Where the model {provenance.model_name} {provenance.model_version} "
        f"(weights sha256 {provenance.model_sha256[:16]}) found abnormal evidence, drawn in red "
        "over a preview of the source image."
    )[:10240]
    sc.DerivationDescription = (
        "Preview of the source image (at most 256 px) with the AI model's heatmap overlaid"
    )
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = source_uid
    sc.SourceImageSequence = DicomSequence([item])
    sc.SecondaryCaptureDeviceManufacturer = provenance.manufacturer[:64]
    sc.SecondaryCaptureDeviceManufacturerModelName = provenance.device_name[:64]
    sc.SecondaryCaptureDeviceSoftwareVersions = (
        f"{provenance.model_name} {provenance.model_version}"[:64]
    )
    return sc


def write_heatmap_scs(
    images: Sequence[HeatmapImage],
    provenance: HeatmapProvenance,
    *,
    revision: int,
    results_dir: Path,
) -> list[tuple[str, Path]]:
    """Build and write the heatmap SC of each image (atomically, like the SR).

    Parameters
    ----------
    images : sequence of HeatmapImage
        The evaluated images of one revision, in order.
    provenance : HeatmapProvenance
    revision : int
    results_dir : Path
        ``DATA_DIR/results`` (the SR's folder).

    Returns
    -------
    list of (str, Path)
        SOP Instance UID and file of each SC, in the order of ``images``.

    Raises
    ------
    OSError
        When a file cannot be written (the ones written before stay).
    """
    written = []
    for number, image in enumerate(images, start=1):
        sc = build_heatmap_sc(image, provenance, revision=revision, instance_number=number)
        written.append((str(sc.SOPInstanceUID), write_sr(sc, results_dir)))
    return written


def write_study_heatmap_scs(
    data_dir: Path,
    sources: Sequence[tuple[int, Dataset, np.ndarray]],
    provenance: HeatmapProvenance,
    *,
    revision: int,
) -> list[tuple[str, Path]]:
    """The heatmap SCs of a revision's evaluated images, best effort: an image whose
    preview is missing, or an SC that cannot be built or written, is logged and left out
    (the SR never waits on a heatmap).

    Parameters
    ----------
    data_dir : Path
        ``Settings.data_dir`` (the previews are read from it, the SCs written under
        ``results``).
    sources : sequence of (int, Dataset, numpy.ndarray)
        Instance id (of its stored preview), header and class-activation map of each
        evaluated image.
    provenance : HeatmapProvenance
    revision : int

    Returns
    -------
    list of (str, Path)
        SOP Instance UID and file of each SC written.
    """
    images = []
    for instance_id, header, cam in sources:
        try:
            preview = thumbnail_path(data_dir, instance_id).read_bytes()
        except OSError as exc:
            log.warning("no heatmap SC for instance %s: no preview (%s)", instance_id, exc)
            continue
        images.append(HeatmapImage(header, preview, cam_heatmap(cam)))
    try:
        return write_heatmap_scs(
            images, provenance, revision=revision, results_dir=Path(data_dir) / "results"
        )
    except (OSError, ValueError, TypeError) as exc:
        log.warning("heatmap SCs of revision %s not written (%s); the SR goes alone", revision, exc)
        return []
