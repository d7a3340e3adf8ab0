"""Which instances the model is for: declarative rules over a DICOM header.

The classifier is trained on frontal chest radiographs. An instance is *eligible*
when every rule below holds; otherwise it is *skipped* with the reason of the first
rule that fails, and that reason is recorded in the database:

1. ``not an image``: the SOP class is a known non-image class (SR, presentation
   state, encapsulated document, waveform, raw data ...), or the header has no
   Rows/Columns.
2. ``modality``: the Modality is CR or DX.
3. ``not single-frame grayscale``: Number of Frames at most 1, Samples per Pixel 1,
   Photometric Interpretation MONOCHROME1 or MONOCHROME2.
4. ``DX for processing``: a DX image *for processing* is raw detector data, not the
   image the model was trained on.
5. ``not chest``: when Body Part Examined is present (non-empty) it is a chest term
   (``CHEST``, ``THORAX``, ``LUNG``, ...). An empty or absent value is accepted,
   since many modalities leave it empty.
6. ``lateral view``: when View Position is present it is a frontal view (``PA``,
   ``AP``; ``POSTERO_ANTERIOR`` ...). An absent View Position is accepted unless
   the View Code Sequence or the protocol text (Protocol Name, Acquisition Device
   Processing Description, Performed Protocol Code Sequence meanings, Series
   Description) names a lateral or oblique view.

The functions here are pure: a header in, :class:`Eligible` or :class:`Skipped` out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydicom.dataset import Dataset

__all__ = [
    "Eligible",
    "Selection",
    "SkipCode",
    "Skipped",
    "select_instance",
    "skipped_unreadable",
]

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

#: SOP class UID prefixes of objects that carry no image.
NON_IMAGE_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, STL, OBJ, MTL
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, fiducials, segmentation
    "1.2.840.10008.5.1.4.1.1.67",  # real world value mapping
    "1.2.840.10008.5.1.4.1.1.481.",  # RT plans, doses, structure sets ...
    "1.2.840.10008.5.1.4.34.",  # treatment records
    "1.2.840.10008.5.1.4.1.1.68.",  # surface
    "1.2.840.10008.5.1.4.1.1.79.",  # real world / measurement
)

ALLOWED_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CXR", "TORAX", "THORAX_CHEST"})
FRONTAL_VIEWS = frozenset({"PA", "AP", "POSTERO_ANTERIOR", "ANTERO_POSTERIOR", "FRONTAL"})
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})

_LATERAL_TEXT = re.compile(r"\b(LAT|LATERAL|LATERALE|LL|RL|OBLIQUE|OBL|LAO|RAO|LPO|RPO)\b")


class SkipCode(StrEnum):
    """Why an instance is not evaluated (stable, machine-readable)."""

    NOT_AN_IMAGE = "not_an_image"
    MODALITY = "modality"
    NOT_GRAYSCALE = "not_single_frame_grayscale"
    FOR_PROCESSING = "for_processing"
    NOT_CHEST = "not_chest"
    LATERAL = "lateral_view"
    UNREADABLE = "cannot_read"
    CANNOT_DECODE = "cannot_decode"


@dataclass(frozen=True)
class Eligible:
    """The instance is a frontal chest CR/DX radiograph the model is for."""

    sop_instance_uid: str

    @property
    def eligible(self) -> bool:
        """Always True."""
        return True


@dataclass(frozen=True)
class Skipped:
    """The instance is not evaluated, with a code and a readable reason."""

    sop_instance_uid: str
    code: SkipCode
    detail: str

    @property
    def eligible(self) -> bool:
        """Always False."""
        return False

    @property
    def reason(self) -> str:
        """``"<code>: <detail>"``, as stored in the database."""
        return f"{self.code.value}: {self.detail}"


Selection = Eligible | Skipped


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


def _code_meanings(ds: Dataset, keyword: str) -> Iterable[str]:
    for item in ds.get(keyword) or []:
        meaning = item.get("CodeMeaning")
        if meaning:
            yield str(meaning)


def _lateral_evidence(ds: Dataset) -> str | None:
    """Return the text that names a lateral/oblique view, or None."""
    candidates: list[tuple[str, str]] = []
    for meaning in _code_meanings(ds, "ViewCodeSequence"):
        candidates.append(("View Code Sequence", meaning))
    for keyword, label in (
        ("ProtocolName", "Protocol Name"),
        ("AcquisitionDeviceProcessingDescription", "Acquisition Device Processing Description"),
        ("SeriesDescription", "Series Description"),
    ):
        text = _text(ds, keyword)
        if text:
            candidates.append((label, text))
    for meaning in _code_meanings(ds, "PerformedProtocolCodeSequence"):
        candidates.append(("Performed Protocol Code Sequence", meaning))
    for label, text in candidates:
        if _LATERAL_TEXT.search(text.upper()):
            return f"{label} {text!r}"
    return None


def select_instance(ds: Dataset) -> Selection:
    """Decide whether an instance is a frontal chest CR/DX radiograph.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance's header (pixel data not needed; read with
        ``stop_before_pixels=True``).

    Returns
    -------
    Eligible or Skipped
        ``Skipped`` carries the first failed rule (see the module docstring).
    """
    uid = str(ds.get("SOPInstanceUID", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = _text(ds, "Modality").upper()

    if any(sop_class.startswith(p) for p in NON_IMAGE_PREFIXES):
        return Skipped(uid, SkipCode.NOT_AN_IMAGE, f"SOP class {sop_class} carries no image")
    if ds.get("Rows") is None or ds.get("Columns") is None:
        return Skipped(
            uid, SkipCode.NOT_AN_IMAGE, f"no Rows/Columns (SOP class {sop_class or 'absent'})"
        )
    if modality not in ALLOWED_MODALITIES:
        return Skipped(uid, SkipCode.MODALITY, f"modality {modality or 'absent'} is not CR or DX")
    frames = ds.get("NumberOfFrames")
    try:
        n_frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:
        return Skipped(uid, SkipCode.NOT_GRAYSCALE, f"{n_frames} frames")
    samples = ds.get("SamplesPerPixel", 1)
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if samples not in (None, 1) or (photometric and photometric not in GRAYSCALE):
        return Skipped(
            uid,
            SkipCode.NOT_GRAYSCALE,
            f"Samples per Pixel {samples}, Photometric Interpretation {photometric}",
        )
    if sop_class == DX_PROCESSING or _text(ds, "PresentationIntentType").upper() == (
        "FOR PROCESSING"
    ):
        return Skipped(uid, SkipCode.FOR_PROCESSING, "DX image for processing (raw data)")
    body_part = _text(ds, "BodyPartExamined").upper()
    if body_part and body_part not in CHEST_BODY_PARTS:
        return Skipped(uid, SkipCode.NOT_CHEST, f"Body Part Examined is {body_part}")
    view = _text(ds, "ViewPosition").upper()
    if view:
        if view not in FRONTAL_VIEWS:
            return Skipped(uid, SkipCode.LATERAL, f"View Position is {view}, not PA or AP")
        return Eligible(uid)
    evidence = _lateral_evidence(ds)
    if evidence:
        return Skipped(uid, SkipCode.LATERAL, f"no View Position; {evidence} names a lateral view")
    return Eligible(uid)


def skipped_unreadable(sop_instance_uid: str, detail: str, *, decode: bool = False) -> Skipped:
    """Build the record of an instance whose file or pixels cannot be read.

    Parameters
    ----------
    sop_instance_uid : str
    detail : str
        The readable cause (an exception message).
    decode : bool
        True when the header was read but the pixels could not be decoded.

    Returns
    -------
    Skipped
    """
    return Skipped(
        sop_instance_uid, SkipCode.CANNOT_DECODE if decode else SkipCode.UNREADABLE, detail
    )
