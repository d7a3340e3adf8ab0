"""The SR delivery retry schedule (issue 13, point 7), as a pure function of the
attempts and the time since the row was created: with the default settings a PACS
outage of 10 minutes, and of anything up to 72 hours, is covered, tries are at most
10 minutes apart, and the row gives up only at the horizon."""

from __future__ import annotations

import pytest

from triage.delivery import next_try_in
from worklist.core.settings import Settings, load_settings

HOUR = 3600.0


def _tries(settings: Settings) -> list[float]:
    """Seconds (since the first try) of every try against a PACS that never answers."""
    times, attempts, now = [0.0], 1, 0.0
    while (delay := next_try_in(settings, attempts, now)) is not None:
        now += delay
        attempts += 1
        times.append(now)
        assert attempts < 10_000
    return times


def test_defaults_retry_for_72_hours_at_most_10_minutes_apart() -> None:
    settings = load_settings()
    assert settings.delivery_retry_hours == 72 and settings.delivery_backoff_max_seconds == 600
    times = _tries(settings)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) == 600.0
    assert times[-1] == pytest.approx(72 * HOUR)  # the last try falls on the horizon
    assert len(times) > 400  # the old schedule gave up after 8 tries (~4.5 minutes)
    print(f"\n{len(times)} tries over {times[-1] / HOUR:.1f} h, largest gap {max(gaps):.0f} s")


@pytest.mark.parametrize("outage_s", [10 * 60, 4.5 * 60, 3 * HOUR, 71.9 * HOUR])
def test_an_outage_within_the_horizon_ends_in_a_delivery_within_10_minutes(
    outage_s: float,
) -> None:
    times = _tries(load_settings())
    after = [t for t in times if t >= outage_s]
    assert after, f"no try after a {outage_s / 60:.0f}-minute outage"
    assert after[0] - outage_s <= 600.0


def test_the_horizon_and_cap_are_settings() -> None:
    fast = load_settings(
        delivery_retry_hours=10 / 3600, delivery_backoff_seconds=0.5,
        delivery_backoff_max_seconds=1,
    )  # fmt: skip
    times = _tries(fast)
    assert times[-1] == pytest.approx(10.0)
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) == 1.0
    assert next_try_in(fast, 1, 10.0) is None
