"""Selection rules on real headers and on edited ones."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from triage.selection import Eligible, SkipCode, Skipped, select_instance


def header(shared_data: Path, name: str) -> pydicom.Dataset:
    return pydicom.dcmread(shared_data / "dicom" / name, stop_before_pixels=True, force=True)


@pytest.mark.parametrize(
    "name",
    [
        "real/RG1_J2KI.dcm",
        "real/canon_DX_chest_966_fixed.dcm",
        "real/konica_CR_chest_Monochrome1-Jpeg.dcm",  # empty body part: accepted
        "real/proscan_DX_chest_J2K_16bit.dcm",  # no body part, no view: accepted
        "real/fuji_CR_chest_from_fodicom_withmeta.dcm",
    ],
)
def test_frontal_chest_is_eligible(shared_data: Path, name: str) -> None:
    assert isinstance(select_instance(header(shared_data, name)), Eligible)


def test_lateral_view_is_skipped_with_reason(shared_data: Path) -> None:
    # No View Position; the protocol says "CANINE LATERAL THORAX".
    result = select_instance(header(shared_data, "real/fujifilm_DX_thorax_lateral_veterinary.dcm"))
    assert isinstance(result, Skipped)
    assert result.code is SkipCode.LATERAL
    assert "LATERAL" in result.reason


def test_view_position_ll_is_lateral(shared_data: Path) -> None:
    ds = header(shared_data, "real/RG1_J2KI.dcm")
    ds.ViewPosition = "LL"
    result = select_instance(ds)
    assert isinstance(result, Skipped) and result.code is SkipCode.LATERAL
    assert result.reason == "lateral_view: View Position is LL, not PA or AP"


def test_non_chest_image_is_skipped(shared_data: Path) -> None:
    result = select_instance(header(shared_data, "real/RG3_J2KI.dcm"))
    assert isinstance(result, Skipped)
    assert result.code is SkipCode.NOT_CHEST
    assert result.reason == "not_chest: Body Part Examined is EXTREMITY"


@pytest.mark.parametrize(
    "name",
    [
        "other/orthanc_MarekLatin2_SR.dcm",
        "other/orthanc_sample-pdf.dcm",
        "other/orthanc_Issue168_GSPS.dcm",
        "other/orthanc_Issue137_STL.dcm",
    ],
)
def test_non_image_is_skipped(shared_data: Path, name: str) -> None:
    result = select_instance(header(shared_data, name))
    assert isinstance(result, Skipped)
    assert result.code is SkipCode.NOT_AN_IMAGE
    assert "carries no image" in result.reason


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("other/CT_small.dcm", SkipCode.MODALITY),
        ("other/US1_J2KI.dcm", SkipCode.MODALITY),
        ("other/JPEG-lossy.dcm", SkipCode.MODALITY),
    ],
)
def test_other_modalities_are_skipped(shared_data: Path, name: str, code: SkipCode) -> None:
    result = select_instance(header(shared_data, name))
    assert isinstance(result, Skipped) and result.code is code


def test_multiframe_and_colour_are_skipped(shared_data: Path) -> None:
    ds = header(shared_data, "real/RG1_J2KI.dcm")
    ds.NumberOfFrames = 3
    assert select_instance(ds).code is SkipCode.NOT_GRAYSCALE  # type: ignore[union-attr]
    ds = header(shared_data, "real/RG1_J2KI.dcm")
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    assert select_instance(ds).code is SkipCode.NOT_GRAYSCALE  # type: ignore[union-attr]


def test_dx_for_processing_is_skipped(shared_data: Path) -> None:
    ds = header(shared_data, "real/canon_DX_chest_966_fixed.dcm")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1.1"
    assert select_instance(ds).code is SkipCode.FOR_PROCESSING  # type: ignore[union-attr]
