"""Triage tuning that the node's :class:`~worklist.settings.Settings` does not (yet) hold.

These values are read once, by the worker's start-up code (never at import time),
and passed down as one frozen object. Each value comes from the settings object when
it has a field of that name (so moving a value into ``Settings`` needs no change
here), else from a ``CXR_TRIAGE_<NAME>`` environment variable (``TRIAGE_*`` names
are reserved for ``Settings``, which rejects unknown ones), else the default.

- ``CXR_TRIAGE_AGGREGATION`` (default max): study score: ``max`` or ``mean``
- ``CXR_TRIAGE_HIGH_CONFIDENCE`` (default 0.9): probability of "abnormal, high"
- ``CXR_TRIAGE_WAIT_CAP_MINUTES`` (default 60): no study waits longer on the list
- ``CXR_TRIAGE_BATCH_SIZE`` (default 8): images per ONNX batch
- ``CXR_TRIAGE_DELIVERY_MAX_ATTEMPTS`` (default 8): then the outbox row is ``failed``
- ``CXR_TRIAGE_DELIVERY_BACKOFF_SECONDS`` (default 2): first retry delay, doubled each time
- ``CXR_TRIAGE_DELIVERY_BACKOFF_MAX_SECONDS`` (default 300): longest retry delay
- ``CXR_TRIAGE_SWEEP_SECONDS`` (default 5): outbox / stalled-triage sweep period
- ``CXR_TRIAGE_LEASE_SECONDS`` (default 120): a claim older than this is re-sent
- ``CXR_TRIAGE_BROKER_POLL_SECONDS`` (default 0.1): embedded broker polling interval
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from triage.errors import ConfigurationError
from triage.scoring import Aggregation

__all__ = ["TriageOptions", "load_triage_options"]


@dataclass(frozen=True)
class TriageOptions:
    """Triage tuning (see the module docstring for each field)."""

    aggregation: str = "max"
    high_confidence: float = 0.9
    wait_cap_minutes: float = 60.0
    batch_size: int = 8
    delivery_max_attempts: int = 8
    delivery_backoff_seconds: float = 2.0
    delivery_backoff_max_seconds: float = 300.0
    sweep_seconds: float = 5.0
    lease_seconds: float = 120.0
    broker_poll_seconds: float = 0.1

    def __post_init__(self) -> None:
        try:
            Aggregation(self.aggregation)
        except ValueError:
            raise ConfigurationError(
                f"CXR_TRIAGE_AGGREGATION must be 'max' or 'mean', not {self.aggregation!r}"
            ) from None
        if not 0.0 < self.high_confidence <= 1.0:
            raise ConfigurationError("CXR_TRIAGE_HIGH_CONFIDENCE must be in (0, 1]")
        if self.batch_size < 1 or self.delivery_max_attempts < 1:
            raise ConfigurationError("CXR_TRIAGE_BATCH_SIZE and TRIAGE_DELIVERY_MAX_ATTEMPTS >= 1")
        for name in (
            "wait_cap_minutes",
            "delivery_backoff_seconds",
            "sweep_seconds",
            "lease_seconds",
            "broker_poll_seconds",
            "delivery_backoff_max_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"CXR_TRIAGE_{name.upper()} must be > 0")

    def backoff(self, attempts: int) -> float:
        """Delay before retry number ``attempts`` (1-based), exponential and capped.

        Parameters
        ----------
        attempts : int

        Returns
        -------
        float
            Seconds.
        """
        return min(
            self.delivery_backoff_max_seconds,
            self.delivery_backoff_seconds * 2 ** max(0, attempts - 1),
        )


def load_triage_options(
    settings: object | None = None, environ: Mapping[str, str] | None = None
) -> TriageOptions:
    """Build :class:`TriageOptions` from the settings and ``CXR_TRIAGE_*`` variables.

    Parameters
    ----------
    settings : Settings, optional
        A field of the same name on the settings wins.
    environ : mapping, optional
        Defaults to ``os.environ``.

    Returns
    -------
    TriageOptions

    Raises
    ------
    ConfigurationError
        When a value does not parse; the message names the variable.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in fields(TriageOptions):
        if settings is not None and hasattr(settings, field.name):
            values[field.name] = getattr(settings, field.name)
            continue
        key = f"CXR_TRIAGE_{field.name.upper()}"
        raw = environ.get(key)
        if raw is None or raw == "":
            continue
        kind = type(field.default)
        try:
            values[field.name] = kind(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
    return TriageOptions(**values)
