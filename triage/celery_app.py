"""The Celery application of the triage workers.

:func:`make_celery` builds the app from the settings (never at import time):

- broker: ``settings.effective_broker_url``: Redis when scaled out, else the
  embedded kombu SQLAlchemy transport on ``DATA_DIR/broker.db``, which polls, so
  ``polling_interval`` is short (through :mod:`triage.broker`, which keeps that
  option away from ``create_engine``);
- two queues: ``inference`` (``triage.triage_study``) and ``delivery``
  (``triage.deliver``, ``triage.sweep``), served by separate worker processes so a
  slow PACS link never holds the GPU;
- late acknowledgement, ``task_reject_on_worker_lost`` (a message whose worker
  process died is redelivered), prefetch 1;
- no result backend: the database is the record of every result.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from triage.broker import celery_broker
from triage.tasks import register_tasks
from worklist.core.contracts import (
    DELIVERY_QUEUE,
    INFERENCE_QUEUE,
    TASK_DELIVER,
    TASK_SWEEP,
    TASK_TRIAGE,
)
from worklist.core.settings import Settings

__all__ = ["make_celery"]

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app with the triage tasks registered.

    Parameters
    ----------
    settings : Settings
        The node's settings (broker, database, model, destinations, triage tuning).

    Returns
    -------
    celery.Celery
        With ``app.conf.triage_settings`` set.
    """
    broker = settings.effective_broker_url
    url, transport = celery_broker(broker)
    app = Celery("triage", broker=url, set_as_current=False)
    if transport is not None:
        app.conf.broker_transport = transport
    transport_options: dict[str, Any] = {}
    if settings.uses_embedded_broker:
        transport_options["polling_interval"] = settings.broker_poll_seconds
    elif broker.startswith(("redis://", "rediss://")):
        # A message whose whole worker died comes back after this many seconds
        # (a dead pool process is handled at once by reject_on_worker_lost; the
        # sweep re-sends stalled revisions after the lease anyway).
        transport_options["visibility_timeout"] = max(60, int(settings.lease_seconds * 2))
    # Plain queues (exchange and routing key = queue name), as the SCP side sends
    # ``triage.triage_study`` by name with ``queue="inference"``.
    app.conf.update(
        task_queues=tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (INFERENCE_QUEUE, DELIVERY_QUEUE)
        ),
        task_default_queue=INFERENCE_QUEUE,
        task_routes={
            TASK_TRIAGE: {"queue": INFERENCE_QUEUE},
            TASK_DELIVER: {"queue": DELIVERY_QUEUE},
            TASK_SWEEP: {"queue": DELIVERY_QUEUE},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
        timezone="UTC",
        triage_settings=settings,
    )
    register_tasks(app)
    return app
