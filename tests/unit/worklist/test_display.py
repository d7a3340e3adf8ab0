"""How values are written for people: sex and age, probabilities, skip reasons, times,
and the model's intended population."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models.population import Population, intended_population, population_warning
from worklist.dicom_values import age_years, sex_age
from worklist.display import local_time, plain_skip_reason, probability_text


@pytest.mark.parametrize(
    ("sex", "age", "shown"),
    [
        ("M", "067Y", "M 67"),
        ("F", "018M", "F 18 mo"),
        ("O", "000Y", ""),
        (None, None, ""),
        ("F", None, "F"),
        ("", "045Y", "45"),
        ("M", "003W", "M 3 wk"),
        ("M", "garbage", "M"),
    ],
)
def test_sex_and_age_as_people_write_them(sex: str | None, age: str | None, shown: str) -> None:
    assert sex_age(sex, age) == shown


@pytest.mark.parametrize(
    ("p", "shown"),
    [
        (0.996, "> 99 %"),
        (0.99, "99 %"),
        (0.5, "50 %"),
        (0.01, "1 %"),
        (0.004, "< 1 %"),
        (0.0, "< 1 %"),
        (1.0, "> 99 %"),
        (None, "—"),
    ],
)
def test_probabilities_never_claim_certainty(p: float | None, shown: str) -> None:
    assert probability_text(p) == shown


@pytest.mark.parametrize(
    ("stored", "modality", "plain"),
    [
        ("lateral_view: View Position is LL, not PA or AP", "DX", "lateral view (LL)"),
        (
            "lateral_view: no View Position; Protocol Name names a lateral view",
            None,
            "lateral view",
        ),
        ("modality: modality CT is not CR or DX", "CT", "CT: not a chest radiograph"),
        ("modality: modality CT is not CR or DX", None, "CT: not a chest radiograph"),
        ("modality: modality absent is not CR or DX", None, "no modality: not a chest radiograph"),
        (
            "not_an_image: SOP class 1.2.840.10008.5.1.4.1.1.88.33 carries no image",
            "SR",
            "not an image (structured report)",
        ),
        ("not_chest: Body Part Examined is KNEE", "CR", "not a chest image (knee)"),
        (
            "for_processing: DX image for processing (raw data)",
            "DX",
            "raw detector image (DX for processing)",
        ),
        ("cannot_decode: JPEG 2000 codec missing", "DX", "the pixels cannot be decoded"),
        (None, "DX", "not triaged yet"),
        ("something new", "DX", "something new"),
    ],
)
def test_skip_reasons_in_plain_words(stored: str | None, modality: str | None, plain: str) -> None:
    assert plain_skip_reason(stored, modality) == plain


def test_one_time_zone_24_hours_zone_shown() -> None:
    winter = datetime(2026, 11, 29, 13, 5, 7, tzinfo=UTC)
    assert local_time(winter, "Europe/Berlin") == "2026-11-29 14:05 CET"
    assert local_time(winter, "UTC", seconds=True) == "2026-11-29 13:05:07 UTC"
    assert local_time(winter.replace(tzinfo=None), "Europe/Berlin") == "2026-11-29 14:05 CET"
    assert local_time(None, "UTC") == "—"


def test_age_strings() -> None:
    assert age_years("067Y") == 67
    assert age_years("006M") == 0.5
    assert age_years("") is None and age_years("old") is None


def test_population_from_the_card_and_the_warning() -> None:
    card = {
        "intended_population": {
            "description": "Children aged 1-5 years",
            "age_min_years": 1,
            "age_max_years": 5,
        }
    }
    population = intended_population(card)
    assert population == Population("Children aged 1-5 years", 1, 5)
    assert population_warning(population, age_years("005Y")) is None
    assert population_warning(population, age_years("060M")) is None  # 5 years
    assert population_warning(population, age_years("002Y")) is None
    assert "67 years" in (population_warning(population, age_years("067Y")) or "")
    assert "6 months" in (population_warning(population, age_years("006M")) or "")
    assert "age unknown" in (population_warning(population, None) or "")
    assert "age unknown" in (population_warning(population, age_years("000Y")) or "")


def test_population_falls_back_on_the_training_ages_or_says_nothing() -> None:
    card = {"training_data": {"counts": {"age": {"known": 700, "min": 18, "max": 87}}}}
    population = intended_population(card)
    assert population is not None and population.age_range_text() == "age 18-87 years"
    assert population_warning(population, age_years("012Y")) is not None
    unknown = {"training_data": {"counts": {"age": {"known": 0, "min": None, "max": None}}}}
    assert intended_population(unknown) is None
    assert population_warning(None, age_years("067Y")) is None


def test_the_shipped_model_states_its_population() -> None:
    from models.card import read_card
    from tests.conftest import REPO_ROOT

    card = read_card(REPO_ROOT / "models" / "default" / "cxr-triage-default.onnx")
    population = intended_population(card.model_dump(mode="json"))
    # children (from 1 year) and adults since the adult default model (issue 17)
    assert population is not None and population.age_min_years == 1
    assert population.age_max_years is None
    assert population_warning(population, age_years("067Y")) is None
    assert population_warning(population, age_years("006M")) is not None
