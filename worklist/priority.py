"""Worklist priority: the one rule and its display (smaller number = read sooner).

Used by the triage worker (:func:`compute_priority`, stored with each result), the
worklist (:func:`effective_priority` and :func:`priority_display`; its query orders by
the same rule written as SQL, :func:`base_priority_sql` and
:func:`effective_priority_sql`) and the simulator.

Base priority of a triaged study (:func:`compute_priority`):

====================  =====  ==================================================
level                 value  when
====================  =====  ==================================================
``STAT``                  0  the hospital requested STAT (Requested Procedure
                             Priority / request attributes)
``OVERDUE``              10  (only in the sort key) waited longer than the cap
``ABNORMAL_HIGH``        20  AI: abnormal, probability >= ``high_confidence``
``ABNORMAL``             30  AI: abnormal; also the hospital's ``HIGH``
``NOT_EVALUATED``        40  AI: no eligible image, or triage failed
``NORMAL``               50  AI: normal; also the hospital's ``ROUTINE``/``MEDIUM``
``LOW``                  60  the hospital's ``LOW``
====================  =====  ==================================================

Two rules from practice:

1. **The AI never lowers a priority the hospital set.** The stored priority is the
   smaller (more urgent) of the AI level and the level of the hospital's requested
   priority; the AI can raise a study, never push it down.
2. **No study waits beyond the cap, whatever its score.** Queues sorted by AI score
   lengthen the longest wait of the studies the AI misses, so
   :func:`effective_priority` moves every study that has waited longer than
   ``wait_cap`` to ``OVERDUE``, above every AI level (only STAT stays above it);
   within a level the oldest study comes first (:func:`worklist_sort_key`).

A study without a result yet is sorted at its :func:`base_priority`: the hospital's
requested level, or ``PENDING`` (40, shown as "Pending AI").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from sqlalchemy import ColumnElement, and_, case, func

__all__ = [
    "PENDING_LEVEL",
    "PRIORITY_DISPLAY",
    "Priority",
    "PriorityDecision",
    "base_priority",
    "base_priority_sql",
    "compute_priority",
    "effective_priority",
    "effective_priority_sql",
    "hospital_level",
    "overdue_cutoff",
    "priority_display",
    "priority_level",
    "worklist_sort_key",
]


class Priority(IntEnum):
    """Priority levels (smaller is more urgent)."""

    STAT = 0
    OVERDUE = 10
    ABNORMAL_HIGH = 20
    ABNORMAL = 30
    NOT_EVALUATED = 40
    NORMAL = 50
    LOW = 60


#: Display of each level: (name, label, colour).
PRIORITY_DISPLAY: dict[int, tuple[str, str, str]] = {
    Priority.STAT: ("STAT", "STAT", "red"),
    Priority.OVERDUE: ("OVERDUE", "Overdue", "purple"),
    Priority.ABNORMAL_HIGH: ("ABNORMAL_HIGH", "Abnormal (high)", "red"),
    Priority.ABNORMAL: ("ABNORMAL", "Abnormal", "orange"),
    Priority.NOT_EVALUATED: ("NOT_EVALUATED", "Not evaluated", "grey"),
    Priority.NORMAL: ("NORMAL", "Normal", "green"),
    Priority.LOW: ("LOW", "Low", "green"),
}
PENDING_LEVEL = int(Priority.NOT_EVALUATED)
"""Level of a study without a result whose hospital set no priority."""
_PENDING_DISPLAY = ("PENDING", "Pending AI", "blue")

_HOSPITAL = {
    "STAT": Priority.STAT,
    "HIGH": Priority.ABNORMAL,
    "MEDIUM": Priority.NORMAL,
    "ROUTINE": Priority.NORMAL,
    "LOW": Priority.LOW,
}


@dataclass(frozen=True)
class PriorityDecision:
    """A priority and the rule that set it (stored with the result)."""

    priority: Priority
    reason: str


def hospital_level(requested_priority: str | None) -> Priority | None:
    """Map the hospital's requested priority to a level.

    Parameters
    ----------
    requested_priority : str or None
        ``STAT``, ``HIGH``, ``MEDIUM``, ``ROUTINE`` or ``LOW`` (case-insensitive);
        anything else is treated as not set.

    Returns
    -------
    Priority or None
    """
    if not requested_priority:
        return None
    return _HOSPITAL.get(requested_priority.strip().upper())


def compute_priority(
    *,
    status: str,
    decision: str | None,
    probability: float | None,
    requested_priority: str | None,
    high_confidence: float = 0.9,
) -> PriorityDecision:
    """Compute the stored worklist priority of a triage result.

    Parameters
    ----------
    status : str
        ``triaged``, ``not_evaluated`` or ``failed``.
    decision : str or None
        ``abnormal`` or ``normal`` when triaged.
    probability : float or None
        Calibrated probability of abnormal.
    requested_priority : str or None
        The hospital's requested priority.
    high_confidence : float
        Probability from which an abnormal study is ``ABNORMAL_HIGH``.

    Returns
    -------
    PriorityDecision
    """
    if status == "triaged" and decision == "abnormal":
        if probability is not None and probability >= high_confidence:
            ai, why = (
                Priority.ABNORMAL_HIGH,
                f"AI abnormal, p={probability:.3f} >= {high_confidence}",
            )
        else:
            ai, why = Priority.ABNORMAL, "AI abnormal"
    elif status == "triaged" and decision == "normal":
        ai, why = Priority.NORMAL, "AI normal"
    else:
        ai, why = Priority.NOT_EVALUATED, f"AI {status.replace('_', ' ')}"
    hospital = hospital_level(requested_priority)
    if hospital is not None and hospital < ai:
        return PriorityDecision(
            hospital, f"hospital priority {requested_priority.strip().upper()} kept ({why})"
        )
    return PriorityDecision(ai, why)


def priority_level(value: int | str) -> int:
    """Parse a priority given as a level number or a name (``ABNORMAL``).

    Parameters
    ----------
    value : int or str

    Returns
    -------
    int

    Raises
    ------
    ValueError
        When it is neither.
    """
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.lstrip("-").isdigit():
        return int(text)
    if text in Priority.__members__:
        return int(Priority[text])
    raise ValueError(f"unknown priority {value!r}")


def base_priority(stored: int | None, requested_priority: str | None) -> int:
    """The level a study is sorted at before the wait cap.

    Parameters
    ----------
    stored : int or None
        The priority stored with its latest result (None: not triaged yet).
    requested_priority : str or None
        The hospital's requested priority (used while there is no result).

    Returns
    -------
    int
    """
    if stored is not None:
        return int(stored)
    hospital = hospital_level(requested_priority)
    return int(hospital) if hospital is not None else PENDING_LEVEL


def overdue_cutoff(now: datetime, wait_cap: timedelta) -> datetime:
    """Arrival time before which a study has waited longer than ``wait_cap``.

    A study is overdue exactly when ``arrived_at < overdue_cutoff(now, wait_cap)``
    (the form the worklist's SQL query uses).

    Parameters
    ----------
    now : datetime
    wait_cap : timedelta

    Returns
    -------
    datetime
    """
    return now - wait_cap


def effective_priority(
    priority: int, arrived_at: datetime, *, now: datetime, wait_cap: timedelta
) -> int:
    """The level a study is sorted and shown at, at time ``now``.

    Parameters
    ----------
    priority : int
        Its :func:`base_priority`.
    arrived_at : datetime
        When the study arrived (its first instance).
    now : datetime
        Current time (same timezone awareness as ``arrived_at``).
    wait_cap : timedelta
        The longest any study may wait before it is moved up to ``OVERDUE``.

    Returns
    -------
    int
        ``min(priority, OVERDUE)`` once the study is overdue, else ``priority``.
    """
    level = int(priority)
    if arrived_at < overdue_cutoff(now, wait_cap):
        level = min(level, int(Priority.OVERDUE))
    return level


def worklist_sort_key(
    priority: int, arrived_at: datetime, *, now: datetime, wait_cap: timedelta
) -> tuple[int, datetime]:
    """Sort key of a study on the worklist at time ``now``.

    Parameters
    ----------
    priority : int
        Its :func:`base_priority`.
    arrived_at : datetime
        When the study arrived (its first instance).
    now : datetime
        Current time (same timezone awareness as ``arrived_at``).
    wait_cap : timedelta
        The longest any study may wait before it is moved up to ``OVERDUE``.

    Returns
    -------
    tuple
        ``(effective priority, arrived_at)``; sort ascending.
    """
    return (effective_priority(priority, arrived_at, now=now, wait_cap=wait_cap), arrived_at)


def base_priority_sql(
    stored: ColumnElement[int | None], requested_priority: ColumnElement[str | None]
) -> ColumnElement[int]:
    """:func:`base_priority` as a SQL expression (SQLite and PostgreSQL).

    Parameters
    ----------
    stored : ColumnElement
        The latest result's stored priority (NULL without a result).
    requested_priority : ColumnElement
        The study's requested priority column.

    Returns
    -------
    ColumnElement
    """
    hospital = case(
        {name: int(level) for name, level in _HOSPITAL.items()},
        value=func.upper(func.trim(requested_priority)),
        else_=PENDING_LEVEL,
    )
    return func.coalesce(stored, hospital)


def effective_priority_sql(
    priority: ColumnElement[int],
    arrived_at: ColumnElement[datetime],
    *,
    now: datetime,
    wait_cap: timedelta,
) -> ColumnElement[int]:
    """:func:`effective_priority` as a SQL expression (SQLite and PostgreSQL).

    Parameters
    ----------
    priority : ColumnElement
        The study's base priority (:func:`base_priority_sql`).
    arrived_at : ColumnElement
        Its arrival column.
    now : datetime
    wait_cap : timedelta

    Returns
    -------
    ColumnElement
    """
    overdue = int(Priority.OVERDUE)
    return case(
        (and_(arrived_at < overdue_cutoff(now, wait_cap), priority > overdue), overdue),
        else_=priority,
    )


def priority_display(level: int, *, has_result: bool) -> tuple[str, str, str]:
    """Name, label and colour of an effective level.

    Parameters
    ----------
    level : int
        The effective priority.
    has_result : bool
        Whether the study has a triage result (without one, the pending level is
        shown as "Pending AI").

    Returns
    -------
    tuple of str
        ``(name, label, colour)``; a level between two known ones shows as the
        nearest.
    """
    if not has_result and level == PENDING_LEVEL:
        return _PENDING_DISPLAY
    if level in PRIORITY_DISPLAY:
        return PRIORITY_DISPLAY[level]
    nearest = min(PRIORITY_DISPLAY, key=lambda k: abs(k - level))
    return PRIORITY_DISPLAY[nearest]
