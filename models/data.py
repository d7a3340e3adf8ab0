"""Labels files (``image,label,findings,patient_id,age,sex,view,source,split``).

Plain ``csv``; no pandas, no torch. Any labels.csv of this form works: missing
demographic columns or empty values are kept as ``None``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LABELS", "Record", "read_labels"]

#: Class names, index = model output (logit > 0 means ``abnormal``).
LABELS: tuple[str, str] = ("normal", "abnormal")


@dataclass(frozen=True)
class Record:
    """One row of a labels file."""

    image: str
    label: int
    split: str | None = None
    patient_id: str | None = None
    age: float | None = None
    sex: str | None = None
    view: str | None = None
    findings: str | None = None
    source: str | None = None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _age(value: str | None) -> float | None:
    value = _clean(value)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def read_labels(path: str | Path, split: str | None = None) -> list[Record]:
    """Read a labels CSV.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file.
    split : str, optional
        Keep only rows whose ``split`` equals this (all rows when None).

    Returns
    -------
    list of Record

    Raises
    ------
    ValueError
        If a required column is missing or a label is not normal/abnormal.
    """
    out: list[Record] = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for lineno, row in enumerate(reader, start=2):
            label = (row.get("label") or "").strip().lower()
            if label not in LABELS:
                raise ValueError(f"{path}:{lineno}: label must be normal/abnormal, got {label!r}")
            rec = Record(
                image=row["image"].strip(),
                label=LABELS.index(label),
                split=_clean(row.get("split")),
                patient_id=_clean(row.get("patient_id")),
                age=_age(row.get("age")),
                sex=_clean(row.get("sex")),
                view=_clean(row.get("view")),
                findings=_clean(row.get("findings")),
                source=_clean(row.get("source")),
            )
            if split is None or rec.split == split:
                out.append(rec)
    return out
