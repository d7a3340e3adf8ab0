"""The stability watcher: a thread that hands stable studies to the triage queue."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from worklist.core.contracts import TriageQueue
from worklist.stability import Handoff, run_stability_round, seconds_until_next_stable

log = logging.getLogger(__name__)


#: Shortest wait between two rounds.
MIN_WAIT_S = 0.02


class StabilityWatcher:
    """Run :func:`worklist.stability.run_stability_round` every ``poll_seconds``, or
    sooner, when a study's quiet period ends before that: a study is handed to triage
    when it becomes stable, not up to a poll later.

    Exceptions of a round are logged and the next round runs as usual.

    Parameters
    ----------
    session_factory : sessionmaker
        The process's session factory.
    queue : TriageQueue
        Where stable studies go.
    quiet_seconds : float
        The quiet period (``settings.stable_seconds``).
    poll_seconds : float
        Time between rounds (``settings.stability_poll_seconds``).
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        queue: TriageQueue,
        *,
        quiet_seconds: float,
        poll_seconds: float,
    ) -> None:
        self.session_factory = session_factory
        self.queue = queue
        self.quiet_seconds = quiet_seconds
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def run_once(self) -> list[Handoff]:
        """Run one round now, logging (not raising) any error.

        Returns
        -------
        list of Handoff
            What the round dispatched (empty on error).
        """
        try:
            return run_stability_round(
                self.session_factory, self.queue, quiet_seconds=self.quiet_seconds
            )
        except Exception:  # the watcher must outlive any one round
            log.exception("stability round failed; retrying in %.1fs", self.poll_seconds)
            return []
        finally:
            self.rounds += 1

    def next_wait(self) -> float:
        """Seconds until the next round: ``poll_seconds``, or less when a receiving
        study's quiet period ends sooner (at least :data:`MIN_WAIT_S`)."""
        try:
            with self.session_factory() as session:
                due = seconds_until_next_stable(session, quiet_seconds=self.quiet_seconds)
        except Exception:  # noqa: BLE001 - the round itself reports database trouble
            return self.poll_seconds
        if due is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(due, MIN_WAIT_S))

    def _run(self) -> None:
        log.info(
            "stability watcher started (quiet %.1fs, poll %.1fs)",
            self.quiet_seconds,
            self.poll_seconds,
        )
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.next_wait())
        log.info("stability watcher stopped")

    def start(self) -> StabilityWatcher:
        """Start the thread (daemon) and return self."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stability-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the current round to finish.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("stability watcher did not stop within %.0fs", timeout)
            self._thread = None

    @property
    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()
