"""The SR: valid under dciodvfy, renders with dsrdump, deterministic, reads back."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from triage.sr import SRContent, build_sr, read_sr_summary, sr_uids, write_sr

SOURCES = [
    "real/RG1_J2KI.dcm",
    "real/canon_DX_chest_966_fixed.dcm",  # over-long accession number in the source
    "real/konica_CR_chest_Monochrome1-Jpeg.dcm",
    "real/fuji_CR_chest_from_fodicom_withmeta.dcm",  # dotted dates in the source
    "torture/fodicom_chrJapMulti_CR_nopixels.dcm",  # ISO 2022 Japanese names
    "torture/derived_fuji_CR_chest_xss_names.dcm",
]


def content(ds: pydicom.Dataset, decision: str, revision: int = 1) -> SRContent:
    return SRContent(
        study_instance_uid=str(ds.StudyInstanceUID),
        revision=revision,
        decision=decision,
        probability=0.8731 if decision == "abnormal" else 0.0412,
        threshold=0.5,
        operating_point="balanced",
        model_name="tiny-test-model",
        model_version="0.0.1",
        model_sha256="ab" * 32,
        manufacturer="cxr-triage-node project",
        device_name="TRIAGE",
        content_datetime=datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC),
    )


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("decision", ["abnormal", "normal"])
def test_sr_is_valid_and_renders(
    shared_data: Path, tmp_path: Path, name: str, decision: str
) -> None:
    ds = pydicom.dcmread(shared_data / "dicom" / name, stop_before_pixels=True)
    path = write_sr(build_sr(content(ds, decision), [ds]), tmp_path)
    assert dciodvfy_errors(path) == []
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    meaning = "Abnormal" if decision == "abnormal" else "Normal"
    assert f'"{meaning}")' in dump.stdout
    assert "Probability of abnormal finding" in dump.stdout
    summary = read_sr_summary(path)
    assert summary["finding"] == decision
    assert summary["threshold"] == pytest.approx(0.5)
    assert summary["operating_point"] == "balanced"
    assert summary["algorithm_name"] == "tiny-test-model"
    assert summary["algorithm_version"] == "0.0.1"
    assert summary["referenced_sop_instance_uids"] == [str(ds.SOPInstanceUID)]
    assert summary["study_instance_uid"] == str(ds.StudyInstanceUID)
    sr = pydicom.dcmread(path)
    assert sr.SeriesInstanceUID != ds.SeriesInstanceUID
    assert sr.PatientID == ds.get("PatientID", "")
    assert sr.Modality == "SR"


def test_uids_are_deterministic_per_study_and_revision(shared_data: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(shared_data / "dicom/real/RG1_J2KI.dcm", stop_before_pixels=True)
    first = write_sr(build_sr(content(ds, "abnormal"), [ds]), tmp_path / "a")
    again = write_sr(build_sr(content(ds, "abnormal"), [ds]), tmp_path / "b")
    assert first.name == again.name
    assert first.read_bytes() == again.read_bytes()
    rev2 = build_sr(content(ds, "abnormal", revision=2), [ds])
    assert rev2.SOPInstanceUID != pydicom.dcmread(first).SOPInstanceUID
    series, sop = sr_uids(str(ds.StudyInstanceUID), 1)
    assert sop == pydicom.dcmread(first).SOPInstanceUID and series.startswith("2.25.")


def test_sr_refuses_images_of_another_study(shared_data: Path) -> None:
    a = pydicom.dcmread(shared_data / "dicom/real/RG1_J2KI.dcm", stop_before_pixels=True)
    b = pydicom.dcmread(
        shared_data / "dicom/real/canon_DX_chest_966_fixed.dcm", stop_before_pixels=True
    )
    with pytest.raises(ValueError):
        build_sr(content(a, "normal"), [a, b])


def test_sr_states_the_intended_population_and_the_warning(
    shared_data: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    ds = pydicom.dcmread(shared_data / "dicom" / SOURCES[0], stop_before_pixels=True)
    stated = replace(
        content(ds, "abnormal"),
        intended_population="Children aged 1-5 years",
        population_warning="patient (67 years) is outside the model's intended population",
    )
    path = write_sr(build_sr(stated, [ds]), tmp_path)
    assert dciodvfy_errors(path) == []
    dump = subprocess.run(
        ["dsrdump", "+Pl", str(path)], capture_output=True, text=True, check=False
    )
    assert '"intended population: Children aged 1-5 years"' in dump.stdout
    assert '"warning: patient (67 years) is outside the model\'s intended population"' in (
        dump.stdout
    )
    plain = write_sr(build_sr(content(ds, "normal"), [ds]), tmp_path / "plain")
    assert (
        "intended population"
        not in subprocess.run(
            ["dsrdump", str(plain)], capture_output=True, text=True, check=False
        ).stdout
    )
