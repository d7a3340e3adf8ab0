"""Triage tuning, taken from the node's one :class:`~worklist.core.settings.Settings`.

The workers read these once at start-up (never at import time) and pass them down as
one frozen object. Each field is the ``TRIAGE_<NAME>`` setting of the same name, with
that setting's default:

- ``aggregation``: study score: ``max`` or ``mean``
- ``high_confidence``: probability of "abnormal, high"
- ``wait_cap_minutes``: no study waits longer on the list
- ``batch_size``: images per ONNX batch
- ``delivery_max_attempts``: then the outbox row is ``failed``
- ``delivery_backoff_seconds``: first retry delay, doubled each time
- ``delivery_backoff_max_seconds``: longest retry delay
- ``sweep_seconds``: outbox / stalled-triage sweep period
- ``lease_seconds``: a claim older than this is re-sent
- ``broker_poll_seconds``: embedded broker polling interval
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from triage.errors import ConfigurationError
from triage.scoring import Aggregation
from worklist.core.settings import Settings

__all__ = ["TriageOptions", "load_triage_options"]


def _default(name: str) -> Any:
    """The default of the setting ``name``: one place for each value."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class TriageOptions:
    """Triage tuning (see the module docstring for each field)."""

    aggregation: str = _default("aggregation")
    high_confidence: float = _default("high_confidence")
    wait_cap_minutes: float = _default("wait_cap_minutes")
    batch_size: int = _default("batch_size")
    delivery_max_attempts: int = _default("delivery_max_attempts")
    delivery_backoff_seconds: float = _default("delivery_backoff_seconds")
    delivery_backoff_max_seconds: float = _default("delivery_backoff_max_seconds")
    sweep_seconds: float = _default("sweep_seconds")
    lease_seconds: float = _default("lease_seconds")
    broker_poll_seconds: float = _default("broker_poll_seconds")

    def __post_init__(self) -> None:
        try:
            Aggregation(self.aggregation)
        except ValueError:
            raise ConfigurationError(
                f"TRIAGE_AGGREGATION must be 'max' or 'mean', not {self.aggregation!r}"
            ) from None
        if not 0.0 < self.high_confidence <= 1.0:
            raise ConfigurationError("TRIAGE_HIGH_CONFIDENCE must be in (0, 1]")
        if self.batch_size < 1 or self.delivery_max_attempts < 1:
            raise ConfigurationError("TRIAGE_BATCH_SIZE and TRIAGE_DELIVERY_MAX_ATTEMPTS >= 1")
        for name in (
            "wait_cap_minutes",
            "delivery_backoff_seconds",
            "sweep_seconds",
            "lease_seconds",
            "broker_poll_seconds",
            "delivery_backoff_max_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"TRIAGE_{name.upper()} must be > 0")

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


def load_triage_options(settings: object | None = None) -> TriageOptions:
    """Build :class:`TriageOptions` from the settings.

    Parameters
    ----------
    settings : Settings, optional
        Fields of the same name are taken from it; without settings, the defaults.

    Returns
    -------
    TriageOptions

    Raises
    ------
    ConfigurationError
        When a value is out of range; the message names the setting.
    """
    values: dict[str, object] = {}
    if settings is not None:
        for field in fields(TriageOptions):
            if hasattr(settings, field.name):
                values[field.name] = getattr(settings, field.name)
    return TriageOptions(**values)
