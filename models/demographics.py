"""Patient demographics shared by evaluation and live monitoring: the age bands.

One definition, so that the subgroup figures of the model card (``models.evaluate``)
and of the node's live monitoring (``worklist.monitoring``) can be compared.
"""

from __future__ import annotations

import math

__all__ = ["AGE_BANDS", "UNKNOWN", "age_band"]

#: Age bands (name, lower bound inclusive, upper bound exclusive), in years.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-17", 0, 18),
    ("18-39", 18, 40),
    ("40-59", 40, 60),
    ("60-79", 60, 80),
    ("80+", 80, math.inf),
)
UNKNOWN = "unknown"
"""The band of an unknown (or impossible) age."""


def age_band(age_years: float | None) -> str:
    """The age band of an age in years.

    Parameters
    ----------
    age_years : float or None

    Returns
    -------
    str
        One of the :data:`AGE_BANDS` names, or :data:`UNKNOWN` when the age is
        missing, not finite or negative.
    """
    if age_years is None or not math.isfinite(age_years):
        return UNKNOWN
    for name, lo, hi in AGE_BANDS:
        if lo <= age_years < hi:
            return name
    return UNKNOWN
