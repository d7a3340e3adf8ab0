"""Which operating point a study is judged at: the card's, or its population's by age.

A model card may carry operating points per population (pediatric below 18
years, adult otherwise; :meth:`models.card.ModelCard.operating_point_for`).
The patient's age comes from the image header: Patient's Age, else Patient's
Birth Date with Study Date; a study without either gets the adult point.
Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.card import ModelCard
from worklist.dicom_values import header_age_years

__all__ = ["AppliedPoint", "applied_operating_point", "study_age_years"]


@dataclass(frozen=True)
class AppliedPoint:
    """The operating point a study was judged at.

    ``label`` is what the result, the SR and the study page show: the point's
    name, with the population after a slash when the card has population
    points (``balanced/pediatric``).
    """

    name: str
    population: str
    threshold: float
    age_years: float | None

    @property
    def label(self) -> str:
        """``name`` or ``name/population``."""
        return self.name if self.population == "all" else f"{self.name}/{self.population}"


def study_age_years(headers: Sequence[object]) -> float | None:
    """The first age any of a study's image headers gives (None when none does)."""
    for header in headers:
        age = header_age_years(header)
        if age is not None:
            return age
    return None


def applied_operating_point(card: ModelCard, name: str, headers: Sequence[object]) -> AppliedPoint:
    """The operating point ``name`` of ``card`` for the patient of ``headers``.

    Parameters
    ----------
    card : models.card.ModelCard
        Gives ``operating_point_for(age, name)``.
    name : str
        The configured operating point (``balanced``, ``high_sensitivity``).
    headers : sequence of pydicom.Dataset
        The study's scored image headers.

    Returns
    -------
    AppliedPoint
    """
    age = study_age_years(headers)
    population, threshold = card.operating_point_for(age, name)
    return AppliedPoint(name, population, threshold, age)
