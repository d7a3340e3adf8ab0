"""The one priority rule and its display (worklist.priority)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worklist.priority import (
    PENDING_LEVEL,
    Priority,
    base_priority,
    effective_priority,
    priority_display,
    priority_level,
)

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
CAP = timedelta(minutes=60)


def test_base_priority_is_the_result_then_the_hospital_then_pending() -> None:
    assert base_priority(50, "STAT") == 50
    assert base_priority(None, " stat ") == Priority.STAT
    assert base_priority(None, "ROUTINE") == Priority.NORMAL
    assert base_priority(None, "URGENT") == PENDING_LEVEL
    assert base_priority(None, None) == PENDING_LEVEL == 40


def test_the_wait_cap_starts_just_after_the_cap() -> None:
    at_cap = NOW - CAP
    assert effective_priority(Priority.NORMAL, at_cap, now=NOW, wait_cap=CAP) == Priority.NORMAL
    past = at_cap - timedelta(microseconds=1)
    assert effective_priority(Priority.NORMAL, past, now=NOW, wait_cap=CAP) == Priority.OVERDUE
    assert effective_priority(Priority.STAT, past, now=NOW, wait_cap=CAP) == Priority.STAT


def test_display_names_pending_only_without_a_result() -> None:
    assert priority_display(40, has_result=False) == ("PENDING", "Pending AI", "blue")
    assert priority_display(40, has_result=True)[0] == "NOT_EVALUATED"
    assert priority_display(10, has_result=False)[1] == "Overdue"
    assert priority_display(24, has_result=True)[0] == "ABNORMAL_HIGH"  # nearest level


def test_priority_level_parses_names_and_numbers() -> None:
    assert priority_level("abnormal") == 30
    assert priority_level(" 20") == 20
    assert priority_level(60) == 60
    with pytest.raises(ValueError, match="unknown priority"):
        priority_level("urgent")
