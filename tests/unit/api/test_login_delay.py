"""The sign-in backoff rule (issue 13, point 11): no wait below the limit, then a
delay that doubles with each failure, capped, counted from the last failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worklist.auth import login_delay

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _delay(failures: int, ago: float = 0.0) -> float:
    return login_delay(
        failures,
        NOW - timedelta(seconds=ago),
        now=NOW,
        limit=5,
        base_seconds=1.0,
        cap_seconds=900.0,
    )


def test_no_wait_below_the_limit() -> None:
    assert [_delay(n) for n in range(5)] == [0.0] * 5
    assert login_delay(9, None, now=NOW, limit=5, base_seconds=1, cap_seconds=9) == 0.0


def test_the_delay_doubles_and_is_capped() -> None:
    assert [_delay(n) for n in range(5, 10)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert _delay(15) == 900.0
    assert _delay(10_000) == 900.0


def test_the_delay_counts_from_the_last_failure() -> None:
    assert _delay(8, ago=3.0) == 5.0
    assert _delay(8, ago=8.0) == 0.0
    assert _delay(8, ago=100.0) == 0.0
