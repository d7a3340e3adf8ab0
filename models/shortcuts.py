"""Shortcut checks: the histogram-only baseline and the era-matched adult patients.

A logistic regression on nothing but an image's 32-bin intensity histogram
tells how much of a label can be read off exposure, processing and era rather
than anatomy; a model must clearly beat it *on the same images*. The NIH
normals of ``cxr-nih512/`` come from one stretch of patient ids (1280-3970),
the pneumonia images from all of them: :func:`era_matched` keeps the patients
of that stretch, where the era says nothing about the label.

numpy, Pillow and scikit-learn (no torch).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.data import Record

__all__ = [
    "ERA_IDS",
    "HistogramBaseline",
    "era_matched",
    "fit_histogram_baseline",
    "histogram_features",
]

#: NIH patient ids the normals of cxr-nih512 were drawn from (inclusive).
ERA_IDS: tuple[int, int] = (1280, 3970)
_NIH_ID = re.compile(r"^nih-(\d+)$")
BINS = 32


def era_matched(records: Sequence[Record], ids: tuple[int, int] = ERA_IDS) -> list[bool]:
    """Which records are NIH patients of the normals' id range (``nih-1280`` .. ``nih-3970``)."""
    out = []
    for r in records:
        m = _NIH_ID.match(r.patient_id or "")
        out.append(bool(m) and ids[0] <= int(m.group(1)) <= ids[1])
    return out


def histogram_features(path: str | Path, *, equalize: bool = False, bins: int = BINS) -> np.ndarray:
    """Normalised ``bins``-bin histogram of an image's 8-bit grey values.

    Parameters
    ----------
    path : str or pathlib.Path
        PNG/JPEG image.
    equalize : bool
        Histogram-equalise first (the ``histeq`` evaluation variant).
    bins : int
        Number of equal-width bins over 0-255.
    """
    with Image.open(path) as img:
        grey = img.convert("L")
        if equalize:
            grey = ImageOps.equalize(grey)
        arr = np.asarray(grey)
    hist = np.bincount((arr.astype(np.int32).ravel() * bins) // 256, minlength=bins)[:bins]
    return hist.astype(np.float64) / max(1, arr.size)


@dataclass
class HistogramBaseline:
    """Standardised histogram + L2 logistic regression (scikit-learn)."""

    model: object
    equalize: bool = False

    def scores(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Abnormal probabilities of the images."""
        x = np.stack([histogram_features(p, equalize=self.equalize) for p in paths])
        return self.model.predict_proba(x)[:, 1]


def fit_histogram_baseline(
    paths: Sequence[str | Path], labels: Sequence[int], *, equalize: bool = False, seed: int = 0
) -> HistogramBaseline:
    """Fit the baseline on training images (regularisation chosen by 5-fold CV on them).

    Parameters
    ----------
    paths : sequence of path
        Training images.
    labels : sequence of int
        1 = abnormal.
    equalize : bool
        Equalise the images first (both here and when scoring).
    seed : int
        Cross-validation seed.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([histogram_features(p, equalize=equalize) for p in paths])
    y = np.asarray(labels, dtype=int)
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=10, cv=5, scoring="roc_auc", max_iter=2000, random_state=seed),
    )
    with warnings.catch_warnings():  # scikit-learn's announcements of 1.10 defaults
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(x, y)
    return HistogramBaseline(clf, equalize)
