"""The operating point by the patient's age: pediatric below 18, adult otherwise or unknown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from models.card import ModelCard, embed_card, read_card
from triage.operating_point import applied_operating_point
from triage.pipeline import triage_study
from triage.sr import read_sr_summary
from worklist.core.settings import load_settings
from worklist.dicom_values import age_years_from_dates, header_age_years
from worklist.tables import TriageResult

from .conftest import make_stable

POINTS = {
    "pediatric": {"balanced": {"threshold": 0.2}, "high_sensitivity": {"threshold": 0.1}},
    "adult": {"balanced": {"threshold": 0.8}, "high_sensitivity": {"threshold": 0.6}},
}


def _card() -> ModelCard:
    return ModelCard(
        name="m",
        version="1",
        operating_points={"balanced": {"threshold": 0.5}, "high_sensitivity": {"threshold": 0.3}},
        population_operating_points=POINTS,
    )


def _header(**values: str) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def test_header_age() -> None:
    assert header_age_years(_header(PatientAge="006Y")) == 6
    assert header_age_years(_header(PatientAge="018M")) == pytest.approx(1.5)
    assert header_age_years(_header(PatientBirthDate="20080615", StudyDate="20260614")) == 17
    assert header_age_years(_header(PatientBirthDate="20080615", StudyDate="20260615")) == 18
    # Patient's Age wins over the dates; a bad age falls back to them
    assert (
        header_age_years(
            _header(PatientAge="040Y", PatientBirthDate="20200101", StudyDate="20260101")
        )
        == 40
    )
    assert (
        header_age_years(
            _header(PatientAge="abc", PatientBirthDate="20200101", StudyDate="20260101")
        )
        == 6
    )
    assert header_age_years(_header()) is None
    assert header_age_years(_header(PatientAge="000Y")) is None  # unknown, as senders write it
    assert age_years_from_dates("20300101", "20260101") is None  # born after the study
    assert age_years_from_dates("2020-01-01", "20260101") is None


@pytest.mark.parametrize(
    ("header", "population", "threshold"),
    [
        (_header(PatientAge="006Y"), "pediatric", 0.2),
        (_header(PatientBirthDate="20200101", StudyDate="20260101"), "pediatric", 0.2),
        (_header(PatientAge="040Y"), "adult", 0.8),
        (_header(), "adult", 0.8),
    ],
)
def test_applied_point_by_age(header: Dataset, population: str, threshold: float) -> None:
    point = applied_operating_point(_card(), "balanced", [header])
    assert (point.population, point.threshold) == (population, threshold)
    assert point.label == f"balanced/{population}"


def test_card_without_population_points_keeps_its_point() -> None:
    card = ModelCard(name="m", version="1", operating_points={"balanced": {"threshold": 0.5}})
    point = applied_operating_point(card, "balanced", [_header(PatientAge="006Y")])
    assert (point.population, point.threshold, point.label) == ("all", 0.5, "balanced")


@pytest.fixture
def population_model(tiny_model: Path, tmp_path: Path) -> Path:
    path = tmp_path / "pop.onnx"
    shutil.copyfile(tiny_model, path)
    card = read_card(tiny_model).model_copy(update={"population_operating_points": POINTS})
    embed_card(path, card)
    return path


@pytest.mark.parametrize(
    ("age", "label", "threshold"),
    [
        ("006Y", "balanced/pediatric", 0.2),
        ("040Y", "balanced/adult", 0.8),
        (None, "balanced/adult", 0.8),
    ],
)
def test_study_gets_the_point_of_its_age(
    session_factory,  # type: ignore[no-untyped-def]
    ingest,
    shared_data: Path,
    tmp_path: Path,
    population_model: Path,
    age: str | None,
    label: str,
    threshold: float,
) -> None:
    from models.runtime import Classifier

    ds = pydicom.dcmread(shared_data / "dicom/real/RG1_from_J2KI_explicit.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientAge", "PatientBirthDate"):
        if keyword in ds:
            delattr(ds, keyword)
    if age is not None:
        ds.PatientAge = age
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    settings = load_settings(data_dir=tmp_path / "data", model_path=population_model)
    study_id = ingest(src)
    (handoff,) = make_stable(session_factory)
    out = triage_study(
        session_factory, settings, Classifier.load(population_model), study_id, handoff.revision
    )
    assert out.status == "triaged"
    with session_factory() as session:
        result = session.scalar(select(TriageResult).where(TriageResult.study_id == study_id))
        assert result.operating_point == label
        assert result.threshold == pytest.approx(threshold)
    summary = read_sr_summary(result.sr_path)
    assert summary["operating_point"] == label
    assert summary["threshold"] == pytest.approx(threshold, abs=1e-6)
