"""Time-to-read definitions shared by the reading-order simulator and the live figures.

One study's reading timeline, in seconds on any common clock (the simulator's
seconds from its start, or the node's UTC timestamps as epoch seconds):

``arrival``
    The study's first instance arrived (``Study.first_received_at``).
``claimed``
    A radiologist opened it (``StudyRead.claimed_at``); ``None`` while unread.
``completed``
    The read was finished (``StudyRead.completed_at``); ``None`` until then.

Definitions (each in one place, here):

- **turnaround** = ``completed - arrival`` (only completed studies have one);
- **wait** = ``claimed - arrival``, or ``now - arrival`` while still unread;
- **over the cap**: ``wait > cap`` (strictly longer, the rule of
  :func:`worklist_sort_key <triage.priority.worklist_sort_key>` that moves a study
  to ``OVERDUE``);
- **percentiles**: linear interpolation between order statistics (numpy's default),
  over the studies of a group;
- **daily trend**: studies grouped by the UTC day of their *arrival*.

Pure functions: no database, no clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "DailyBucket",
    "StudyTimes",
    "Summary",
    "daily_trend",
    "over_cap",
    "percentile",
    "summarize",
    "turnaround",
    "wait",
]

_DAY = 86400.0


@dataclass(frozen=True)
class StudyTimes:
    """The reading timeline of one study (seconds on a common clock).

    Attributes
    ----------
    arrival : float
    claimed : float or None
        None while nobody has opened it.
    completed : float or None
        None until the read is finished.
    level : int or None
        Its stored priority level (None: no triage result).
    truth : str or None
        ``normal`` / ``abnormal`` where known (a radiologist's label, or the test
        set's label in the simulator).
    """

    arrival: float
    claimed: float | None = None
    completed: float | None = None
    level: int | None = None
    truth: str | None = None


@dataclass(frozen=True)
class Summary:
    """Count, mean, median, 90th percentile and maximum of a set of durations (s).

    The statistics are None when ``n`` is 0.
    """

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    max: float | None


@dataclass(frozen=True)
class DailyBucket:
    """Turnaround of the studies that arrived on one UTC day.

    Attributes
    ----------
    day : str
        ISO date.
    arrived : int
        Studies that arrived that day.
    turnaround : Summary
        Of those already completed.
    over_cap : int
        Of those, how many waited (or are waiting) longer than the cap.
    """

    day: str
    arrived: int
    turnaround: Summary
    over_cap: int


def turnaround(study: StudyTimes) -> float | None:
    """Seconds from arrival to a completed read (None while not completed).

    Parameters
    ----------
    study : StudyTimes

    Returns
    -------
    float or None
    """
    if study.completed is None:
        return None
    return study.completed - study.arrival


def wait(study: StudyTimes, now: float) -> float:
    """Seconds a study waited before it was opened, or has waited so far.

    Parameters
    ----------
    study : StudyTimes
    now : float
        Used while the study is still unread.

    Returns
    -------
    float
        ``claimed - arrival``, or ``now - arrival`` when unread; never negative.
    """
    end = study.claimed if study.claimed is not None else now
    return max(0.0, end - study.arrival)


def over_cap(wait_seconds: float, cap_seconds: float) -> bool:
    """Whether a wait is over the cap (strictly longer, as the worklist sorts).

    Parameters
    ----------
    wait_seconds, cap_seconds : float

    Returns
    -------
    bool
    """
    return wait_seconds > cap_seconds


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) with linear interpolation (numpy's default).

    Parameters
    ----------
    values : sequence of float
    q : float

    Returns
    -------
    float or None
        None for an empty sequence.
    """
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> Summary:
    """Count, mean, p50, p90 and maximum of durations.

    Parameters
    ----------
    values : iterable of float

    Returns
    -------
    Summary
    """
    data = sorted(float(v) for v in values)
    if not data:
        return Summary(0, None, None, None, None)
    return Summary(
        n=len(data),
        mean=sum(data) / len(data),
        p50=percentile(data, 0.5),
        p90=percentile(data, 0.9),
        max=data[-1],
    )


def _utc_day(seconds: float) -> str:
    return datetime.fromtimestamp(math.floor(seconds / _DAY) * _DAY, tz=UTC).date().isoformat()


def daily_trend(
    studies: Iterable[StudyTimes], *, now: float, cap_seconds: float
) -> list[DailyBucket]:
    """Turnaround and over-cap counts per UTC day of arrival (epoch seconds).

    Parameters
    ----------
    studies : iterable of StudyTimes
        With epoch-second timestamps.
    now : float
        Epoch seconds; the wait of studies still unread runs to ``now``.
    cap_seconds : float

    Returns
    -------
    list of DailyBucket
        Oldest day first; days without arrivals are left out.
    """
    per_day: dict[str, list[StudyTimes]] = defaultdict(list)
    for study in studies:
        per_day[_utc_day(study.arrival)].append(study)
    out = []
    for day in sorted(per_day):
        group = per_day[day]
        done = [t for t in (turnaround(s) for s in group) if t is not None]
        out.append(
            DailyBucket(
                day=day,
                arrived=len(group),
                turnaround=summarize(done),
                over_cap=sum(over_cap(wait(s, now), cap_seconds) for s in group),
            )
        )
    return out
