"""From image scores to a study decision: aggregation, calibration, threshold.

The model gives one logit per eligible image. The study score is an aggregate of
those logits (``max`` by default: a study is as abnormal as its most abnormal
image; ``mean`` is the alternative). The card's calibration turns the study score
into a probability, and the decision is ``abnormal`` when that probability is at
least the threshold of the configured operating point (the card's thresholds are
on the calibrated probability).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

__all__ = ["Aggregation", "Decision", "StudyScore", "aggregate", "decide", "score_study"]


class Aggregation(StrEnum):
    """How image logits become the study score."""

    MAX = "max"
    MEAN = "mean"


class Decision(StrEnum):
    """The study-level finding."""

    ABNORMAL = "abnormal"
    NORMAL = "normal"


@dataclass(frozen=True)
class StudyScore:
    """A scored study.

    Attributes
    ----------
    score : float
        Aggregated logit.
    probability : float
        Calibrated probability of *abnormal*.
    threshold : float
        Threshold of the operating point, on the probability.
    operating_point : str
    decision : Decision
    image_probabilities : tuple of float
        Calibrated probability of each image, in input order.
    aggregation : Aggregation
    """

    score: float
    probability: float
    threshold: float
    operating_point: str
    decision: Decision
    image_probabilities: tuple[float, ...]
    aggregation: Aggregation


def aggregate(logits: Sequence[float] | np.ndarray, how: Aggregation | str = "max") -> float:
    """Aggregate image logits into a study score.

    Parameters
    ----------
    logits : sequence of float
        One logit per eligible image (at least one).
    how : Aggregation or str
        ``'max'`` or ``'mean'``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When ``logits`` is empty or ``how`` is unknown.
    """
    arr = np.asarray(logits, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("cannot aggregate an empty list of image scores")
    how = Aggregation(how)
    return float(arr.max() if how is Aggregation.MAX else arr.mean())


def decide(probability: float, threshold: float) -> Decision:
    """Return ``abnormal`` when ``probability >= threshold``, else ``normal``.

    Parameters
    ----------
    probability : float
    threshold : float

    Returns
    -------
    Decision
    """
    return Decision.ABNORMAL if probability >= threshold else Decision.NORMAL


def score_study(
    logits: Sequence[float] | np.ndarray,
    *,
    calibrate: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    operating_point: str,
    how: Aggregation | str = "max",
) -> StudyScore:
    """Score a study from its image logits.

    Parameters
    ----------
    logits : sequence of float
        One logit per eligible image.
    calibrate : callable
        The card's calibration, logits (array) to probabilities (array).
    threshold : float
        The operating point's threshold on the probability.
    operating_point : str
        Its name (recorded).
    how : Aggregation or str
        Aggregation of the image logits.

    Returns
    -------
    StudyScore
    """
    arr = np.asarray(logits, dtype=np.float32).reshape(-1)
    score = aggregate(arr, how)
    image_probs = np.asarray(calibrate(arr), dtype=np.float64).reshape(-1)
    probability = float(
        np.asarray(calibrate(np.asarray([score], dtype=np.float32)), dtype=np.float64).reshape(-1)[
            0
        ]
    )
    return StudyScore(
        score=score,
        probability=probability,
        threshold=float(threshold),
        operating_point=operating_point,
        decision=decide(probability, threshold),
        image_probabilities=tuple(float(p) for p in image_probs),
        aggregation=Aggregation(how),
    )
