"""The population a model is for, from its card, and whether a patient is in it.

A card states it in ``intended_population``::

    {"description": "Children aged 1-5 years ...", "age_min_years": 1, "age_max_years": 5}

``age_max_years`` is inclusive in whole years (a patient of 5 years 11 months is 5).
A card without that entry falls back on the ages of its training data
(``training_data.counts.age``: ``min``/``max`` when ``known`` > 0). Pure functions,
no ONNX Runtime or torch; the caller parses the DICOM age.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Population", "intended_population", "population_warning"]


@dataclass(frozen=True)
class Population:
    """Who a model is for.

    Attributes
    ----------
    description : str
        One sentence for people ("Children aged 1-5 years ...").
    age_min_years, age_max_years : float or None
        Inclusive bounds in whole years; None when the card does not bound the age.
    """

    description: str
    age_min_years: float | None = None
    age_max_years: float | None = None

    def age_range_text(self) -> str:
        """``"age 1-5 years"``, ``"age 18 years and over"`` or ``""``."""
        lo, hi = self.age_min_years, self.age_max_years
        if lo is not None and hi is not None:
            return f"age {lo:g}-{hi:g} years"
        if lo is not None:
            return f"age {lo:g} years and over"
        if hi is not None:
            return f"age up to {hi:g} years"
        return ""

    def summary(self) -> str:
        """The description, or the age range when there is no description."""
        return self.description or self.age_range_text()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def intended_population(card: Mapping[str, Any]) -> Population | None:
    """The population a card states, or that its training data implies.

    Parameters
    ----------
    card : mapping
        The model card as JSON (``ModelCard.model_dump()``).

    Returns
    -------
    Population or None
        None when the card says nothing about it.
    """
    stated = card.get("intended_population") or {}
    if stated:
        return Population(
            description=str(stated.get("description") or ""),
            age_min_years=_number(stated.get("age_min_years")),
            age_max_years=_number(stated.get("age_max_years")),
        )
    ages = ((card.get("training_data") or {}).get("counts") or {}).get("age") or {}
    lo, hi = _number(ages.get("min")), _number(ages.get("max"))
    if ages.get("known") and (lo is not None or hi is not None):
        population = Population("", lo, hi)
        return Population(f"trained on {population.age_range_text()}", lo, hi)
    return None


def population_warning(population: Population | None, age_years: float | None) -> str | None:
    """Say when a patient is outside the model's population (or cannot be checked).

    Parameters
    ----------
    population : Population or None
        From :func:`intended_population`.
    age_years : float or None
        The patient's age in years (``worklist.dicom_values.age_years`` of the DICOM
        Patient's Age); None or 0 (senders write ``000Y`` for unknown) is unknown.

    Returns
    -------
    str or None
        None when the patient is inside, or the card bounds no age.
    """
    if population is None:
        return None
    lo, hi = population.age_min_years, population.age_max_years
    if lo is None and hi is None:
        return None
    years = age_years
    if not years:
        return f"patient age unknown: the model is for {population.age_range_text()}"
    whole = int(years)
    if (lo is not None and years < lo) or (hi is not None and whole > hi):
        shown = f"{whole} years" if years >= 2 else f"{round(years * 12)} months"
        return (
            f"patient ({shown}) is outside the model's intended population"
            f" ({population.age_range_text()}): read the result with care"
        )
    return None
