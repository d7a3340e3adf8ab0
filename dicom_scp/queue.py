"""The triage queue as the SCP sees it: a Celery task sent by name.

The SCP never imports worker code; it only knows the task's name and arguments.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from worklist.core.contracts import INFERENCE_QUEUE, TASK_TRIAGE
from worklist.core.settings import Settings

__all__ = ["CeleryTriageQueue"]

log = logging.getLogger(__name__)


class CeleryTriageQueue:
    """A :class:`worklist.core.contracts.TriageQueue` that sends Celery tasks by name.

    The Celery app is created lazily on the first :meth:`enqueue`, from
    ``settings.effective_broker_url``. The queue is a plain one (exchange and routing
    key = ``inference``), as the workers declare it. No ``polling_interval`` is set
    for the embedded ``sqla+sqlite`` broker: only consumers poll, and kombu 5.7's
    SQLAlchemy transport hands unknown transport options to ``create_engine``, which
    rejects ``polling_interval`` (the workers use their own transport subclass).

    Parameters
    ----------
    settings : Settings
        Supplies the broker URL.
    """

    def __init__(self, settings: Settings) -> None:
        self.broker_url = settings.effective_broker_url
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        """The Celery app (created on first use)."""
        with self._lock:
            if self._app is None:
                from celery import Celery

                app = Celery("dicom_scp", broker=self.broker_url, set_as_current=False)
                app.conf.update(
                    task_default_queue=INFERENCE_QUEUE,
                    broker_connection_retry_on_startup=True,
                    # A broker outage fails the enqueue quickly; the watcher retries.
                    broker_connection_timeout=5,
                    task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2},
                )
                self._app = app
            return self._app

    def enqueue(self, study_id: int, revision: int) -> None:
        """Send ``triage.triage_study(study_id, revision)`` to the ``inference`` queue.

        Parameters
        ----------
        study_id : int
            Database id of the study.
        revision : int
            The study's triage revision.

        Raises
        ------
        Exception
            Whatever the broker raises; the caller retries on its next round.
        """
        self.app.send_task(TASK_TRIAGE, args=(int(study_id), int(revision)), queue=INFERENCE_QUEUE)
        log.debug("sent %s(%s, %s)", TASK_TRIAGE, study_id, revision)

    def close(self) -> None:
        """Release the broker connections, if any were made."""
        with self._lock:
            if self._app is not None:
                try:
                    self._app.close()
                finally:
                    self._app = None
