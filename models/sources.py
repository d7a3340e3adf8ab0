"""Several labelled sources at once: ``--data LABELS:ROOT[:WEIGHT[:POPULATION]]``.

A source is one ``labels.csv`` with the folder its ``image`` paths are relative
to, a sampling weight (the share of training draws it gets, relative to the
other sources) and the population its rows without an age belong to
(``adult`` unless told: the node gives a patient without an age the adult
operating point, see :func:`models.card.population_for_age`).

No torch here: training, calibration and evaluation share this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.card import POPULATIONS, population_for_age
from models.data import LABELS, Record, read_labels

__all__ = [
    "DataSource",
    "SourceRecord",
    "describe_sources",
    "parse_source",
    "read_sources",
    "resolve_sources",
    "sampling_weights",
]


@dataclass(frozen=True)
class DataSource:
    """One labelled source.

    Parameters
    ----------
    labels : str
        Path of the labels CSV.
    images_root : str
        Folder the CSV's ``image`` paths are relative to.
    weight : float
        Relative share of the training draws (> 0).
    population : str
        Population of rows without an age (``'adult'`` or ``'pediatric'``).
    """

    labels: str
    images_root: str
    weight: float = 1.0
    population: str = "adult"

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"source weight must be > 0, got {self.weight}")
        if self.population not in POPULATIONS:
            raise ValueError(f"population must be one of {POPULATIONS}, got {self.population!r}")

    @property
    def name(self) -> str:
        """Short name: the images folder's name (``cxr``, ``cxr-nih512``)."""
        return Path(self.images_root).name or str(self.images_root)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the training config)."""
        return asdict(self)


@dataclass(frozen=True)
class SourceRecord:
    """A labels row with the source it came from."""

    source: DataSource
    record: Record

    @property
    def path(self) -> Path:
        """Image file path."""
        return Path(self.source.images_root) / self.record.image

    @property
    def population(self) -> str:
        """``'pediatric'`` or ``'adult'``: by age when known, else the source's."""
        if self.record.age is None:
            return self.source.population
        return population_for_age(self.record.age)


def parse_source(text: str) -> DataSource:
    """Parse ``LABELS:ROOT[:WEIGHT[:POPULATION]]``.

    Raises
    ------
    ValueError
        For a malformed spec, a non-positive weight or an unknown population.
    """
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise ValueError(f"--data expects LABELS:ROOT[:WEIGHT[:POPULATION]], got {text!r}")
    weight = 1.0
    if len(parts) >= 3 and parts[2]:
        try:
            weight = float(parts[2])
        except ValueError:
            raise ValueError(f"--data {text!r}: weight {parts[2]!r} is not a number") from None
    population = parts[3] if len(parts) == 4 and parts[3] else "adult"
    return DataSource(parts[0], parts[1], weight, population)


def resolve_sources(
    data: Sequence[str] | None,
    labels: str | None = None,
    images_root: str | None = None,
) -> list[DataSource]:
    """The sources of a command line: repeated ``--data``, or ``--labels``/``--images-root``.

    Raises
    ------
    ValueError
        When neither or a half of the single-source pair is given.
    """
    sources = [parse_source(t) for t in data or ()]
    if labels or images_root:
        if not (labels and images_root):
            raise ValueError("--labels and --images-root go together")
        sources.insert(0, DataSource(labels, images_root))
    if not sources:
        raise ValueError("give --data LABELS:ROOT (repeatable) or --labels and --images-root")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"two sources share an images folder name: {names}")
    return sources


def read_sources(sources: Sequence[DataSource], split: str | None = None) -> list[SourceRecord]:
    """Rows of every source (of one split when given), in source order."""
    out: list[SourceRecord] = []
    for src in sources:
        out += [SourceRecord(src, r) for r in read_labels(src.labels, split)]
    return out


def sampling_weights(items: Sequence[SourceRecord], *, balance_view: bool = False) -> np.ndarray:
    """Probability of drawing each training row.

    Each source gets its weight's share of the draws. Within a source, with
    ``balance_view``, every (label, view) cell of a label gets the same share
    of that label's draws, so that the view says nothing about the label in
    what the model sees (rows without a view form their own cell); the
    labels keep their own proportions.

    Returns
    -------
    numpy.ndarray
        Non-negative weights summing to 1.
    """
    w = np.zeros(len(items))
    by_source: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_source.setdefault(id(it.source), []).append(i)
    total = sum(items[idx[0]].source.weight for idx in by_source.values())
    for idx in by_source.values():
        share = items[idx[0]].source.weight / total
        if not balance_view:
            w[idx] = share / len(idx)
            continue
        label_n = Counter(items[i].record.label for i in idx)
        cells = Counter((items[i].record.label, _view(items[i].record)) for i in idx)
        views_per_label = Counter(label for label, _ in cells)
        for i in idx:
            rec = items[i].record
            label_share = label_n[rec.label] / len(idx)
            w[i] = share * label_share / views_per_label[rec.label] / cells[(rec.label, _view(rec))]
    return w / w.sum()


def _view(rec: Record) -> str:
    return (rec.view or "missing").upper()


def describe_sources(sources: Sequence[DataSource]) -> list[dict[str, Any]]:
    """Per source: name, files, weight, population, counts per split and label.

    This is the model card's ``training_data.sources``.
    """
    out = []
    for src in sources:
        recs = read_labels(src.labels)
        splits: dict[str, dict[str, int]] = {}
        for r in recs:
            d = splits.setdefault(r.split or "missing", {"n": 0, "normal": 0, "abnormal": 0})
            d["n"] += 1
            d[LABELS[r.label]] += 1
        out.append(
            {
                "name": src.name,
                "labels_file": f"{Path(src.labels).parent.name}/{Path(src.labels).name}",
                "images_root": src.name,
                "weight": src.weight,
                "population_without_age": src.population,
                "n": len(recs),
                "patients": len({r.patient_id for r in recs if r.patient_id}),
                "splits": splits,
                "view": dict(Counter((r.view or "missing") for r in recs)),
            }
        )
    return out
