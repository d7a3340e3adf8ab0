"""Worklist priority: plain, documented rules (smaller number = read sooner).

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
   :func:`worklist_sort_key` moves every study that has waited longer than
   ``wait_cap`` to ``OVERDUE``, above every AI level (only STAT stays above it);
   within a level the oldest study comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

__all__ = [
    "Priority",
    "PriorityDecision",
    "compute_priority",
    "hospital_level",
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


def worklist_sort_key(
    priority: int, arrived_at: datetime, *, now: datetime, wait_cap: timedelta
) -> tuple[int, datetime]:
    """Sort key of a study on the worklist at time ``now``.

    Parameters
    ----------
    priority : int
        The stored priority (:func:`compute_priority`).
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
    effective = int(priority)
    if now - arrived_at > wait_cap:
        effective = min(effective, int(Priority.OVERDUE))
    return (effective, arrived_at)
