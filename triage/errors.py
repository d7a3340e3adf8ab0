"""Exceptions of the triage package: one root, specific subclasses.

Only :class:`TransientError` subclasses are retried by the Celery tasks.
"""

from __future__ import annotations


class TriageError(Exception):
    """Root of the triage package's errors."""


class ModelError(TriageError):
    """The model cannot be loaded or its card lacks what triage needs."""


class TransientError(TriageError):
    """A failure that may pass (database busy, network, destination down): retry."""


class DestinationUnavailable(TransientError):
    """The destination refused or dropped the association, or did not answer."""


class StoreRejected(TriageError):
    """The destination answered the C-STORE with a failure status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """True for *out of resources* (0xA7xx): worth retrying."""
        return (self.status & 0xFF00) == 0xA700
