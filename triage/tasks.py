"""Celery tasks: thin wrappers (ids in, state re-read from the database, plain
functions called).

- ``triage.triage_study(study_id, revision)``, queue ``inference``: runs
  :func:`triage.pipeline.triage_batch` (the revision, and up to
  ``inference_batch_studies - 1`` other revisions waiting, in one inference), and
  sends one ``triage.deliver`` per outbox row of each as soon as it is recorded.
  Retried with backoff only on named transient errors (database unavailable or
  locked, :class:`~triage.errors.TransientError`).
- ``triage.deliver(delivery_id)``, queue ``delivery``: one C-STORE attempt of one
  outbox row; a transient failure records the next attempt time (exponential
  backoff, capped) and the sweep sends it again when due; once the retry horizon
  (``delivery_retry_hours`` after the row was created or resent) has passed, the row
  is ``failed``, alerted, and waits for ``triage-node resend``.
- ``triage.sweep()``, queue ``delivery``: :func:`sweep` sends every due outbox row
  and re-sends stalled triage revisions. The delivery worker also runs it
  periodically (see :mod:`triage.worker`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.runtime import Classifier, choose_providers
from triage.delivery import next_try_in, store_file
from triage.errors import DestinationUnavailable, StoreRejected, TransientError
from triage.inference import batch_studies_for
from triage.pipeline import TriageOutcome, triage_batch
from triage.registry_models import RegistryModels
from triage.shadow import score_shadows
from worklist.core.clock import as_utc, utcnow
from worklist.core.contracts import (
    DELIVERY_QUEUE,
    INFERENCE_QUEUE,
    TASK_DELIVER,
    TASK_SWEEP,
    TASK_TRIAGE,
)
from worklist.core.db import open_database
from worklist.core.settings import Settings
from worklist.outbox import (
    claim_delivery,
    due_deliveries,
    mark_delivered,
    mark_failed_attempt,
    mark_redispatched,
)
from worklist.results import stalled_revisions

__all__ = ["WorkerContext", "deliver_one", "register_tasks", "shadow_score", "sweep"]

log = logging.getLogger(__name__)


@dataclass
class _Engine:
    pid: int
    engine: Engine
    session_factory: sessionmaker[Session]


class WorkerContext:
    """Per-process resources of a worker: the engine and session factory, built
    lazily (and again in a forked child)."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session] | None = None
    ) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: _Engine | None = None
        self._given_factory = session_factory
        self._models: RegistryModels | None = None

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """This process's session factory (the given one, if any)."""
        if self._given_factory is not None:
            return self._given_factory
        with self._lock:
            if self._engine is None or self._engine.pid != os.getpid():
                database = open_database(self.settings)
                self._engine = _Engine(os.getpid(), database.engine, database.session_factory)
            return self._engine.session_factory

    @property
    def models(self) -> RegistryModels:
        """This process's registry models (champion and shadows, loaded once)."""
        if self._models is None:
            self._models = RegistryModels(self.settings, batch_size=self.settings.batch_size)
        return self._models

    def batch_studies(self) -> int:
        """Study revisions a task triages together (:func:`triage.inference.batch_studies_for`),
        by the champion's active providers once loaded, else the ones it will ask for."""
        champion = self.models.champion
        if champion is not None:
            providers = champion.classifier.active_providers
        else:
            providers = choose_providers(list(self.settings.providers) or None)
        return batch_studies_for(self.settings.inference_batch_studies, providers)

    def classifier(self) -> Classifier:
        """The registry's champion, reloaded when a promotion changed it."""
        return self.models.refresh(self.session_factory).classifier


def _context(app: Celery) -> WorkerContext:
    ctx = getattr(app, "triage_context", None)
    if ctx is None:
        ctx = WorkerContext(app.conf.triage_settings)
        app.triage_context = ctx
    return ctx


def deliver_one(ctx: WorkerContext, delivery_id: int) -> str:
    """One delivery attempt of one outbox row (the body of ``triage.deliver``).

    Parameters
    ----------
    ctx : WorkerContext
    delivery_id : int

    Returns
    -------
    str
        ``delivered``, ``pending`` (will be retried), ``failed`` or ``not due``.
    """
    settings = ctx.settings
    with ctx.session_factory.begin() as session:
        job = claim_delivery(session, delivery_id=delivery_id, lease_seconds=settings.lease_seconds)
    if job is None:
        return "not due"
    try:
        store_file(job.file_path, job.destination, calling_ae=settings.ae_title)
    except (DestinationUnavailable, StoreRejected, FileNotFoundError, OSError) as exc:
        transient = (
            isinstance(exc, DestinationUnavailable)
            or (isinstance(exc, StoreRejected) and exc.transient)
            or (isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError))
        )
        age = (utcnow() - as_utc(job.created_at)).total_seconds()
        retry_in = next_try_in(settings, job.attempts, age) if transient else None
        with ctx.session_factory.begin() as session:
            state = mark_failed_attempt(
                session, delivery_id=job.id, error=f"{type(exc).__name__}: {exc}", retry_in=retry_in
            )
        log_fn = log.warning if retry_in is not None else log.error
        log_fn(
            "delivery %s of %s %s to %s: attempt %s failed (%s); %s",
            job.id,
            job.what,
            job.sop_instance_uid,
            job.destination,
            job.attempts,
            exc,
            f"retry in {retry_in:.1f} s"
            if retry_in is not None
            else "gave up (retry horizon passed or permanent error; triage-node resend "
            "re-queues it)",
        )
        return state
    with ctx.session_factory.begin() as session:
        mark_delivered(session, delivery_id=job.id)
    return "delivered"


def sweep(app: Celery) -> dict[str, int]:
    """Send every due outbox row and re-send stalled triage revisions.

    Parameters
    ----------
    app : celery.Celery

    Returns
    -------
    dict
        ``{"deliveries": n, "revisions": m}`` sent.
    """
    ctx = _context(app)
    with ctx.session_factory() as session:
        due = due_deliveries(session)
        stalled = stalled_revisions(session, lease_seconds=ctx.settings.lease_seconds)
    for delivery_id in due:
        app.send_task(TASK_DELIVER, args=(delivery_id,), queue=DELIVERY_QUEUE)
    for study_id, revision in stalled:
        log.warning("study %s revision %s stalled; sending it to triage again", study_id, revision)
        app.send_task(TASK_TRIAGE, args=(study_id, revision), queue=INFERENCE_QUEUE)
        with ctx.session_factory.begin() as session:
            mark_redispatched(session, study_id=study_id, revision=revision)
    return {"deliveries": len(due), "revisions": len(stalled)}


def shadow_score(ctx: WorkerContext, result_id: int) -> int:
    """Score a triaged result with the registry's shadow models (after the champion's
    result is recorded and its deliveries sent; see :mod:`triage.shadow`).

    Parameters
    ----------
    ctx : WorkerContext
    result_id : int

    Returns
    -------
    int
        Shadow scores stored.
    """
    ctx.models.refresh(ctx.session_factory)
    return score_shadows(
        ctx.session_factory,
        ctx.settings,
        ctx.models.shadows,
        result_id,
        aggregation=ctx.settings.aggregation,
    )


def register_tasks(app: Celery) -> None:
    """Register the triage tasks on ``app`` (called by :func:`~triage.celery_app.make_celery`).

    Parameters
    ----------
    app : celery.Celery
    """

    @app.task(
        name=TASK_TRIAGE,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(OperationalError, TransientError),
        retry_backoff=1,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=8,
    )
    def triage_study_task(self: Task, study_id: int, revision: int) -> dict[str, Any]:
        ctx = _context(app)

        def send(each: TriageOutcome) -> None:
            for delivery_id in each.deliveries:
                app.send_task(TASK_DELIVER, args=(delivery_id,), queue=DELIVERY_QUEUE)

        outcome, *batched = triage_batch(
            ctx.session_factory,
            ctx.settings,
            ctx.classifier,
            int(study_id),
            int(revision),
            batch_studies=ctx.batch_studies(),
            on_outcome=send,
        )
        for each in (outcome, *batched):
            if each.result_id is not None and each.status == "triaged":
                shadow_score(ctx, each.result_id)
        return {
            "study_id": outcome.study_id,
            "revision": outcome.revision,
            "claim": outcome.claim.value,
            "status": outcome.status,
            "result_id": outcome.result_id,
            "batched": [[b.study_id, b.revision] for b in batched],
        }

    @app.task(
        name=TASK_DELIVER,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(OperationalError,),
        retry_backoff=1,
        retry_backoff_max=30,
        max_retries=8,
    )
    def deliver_task(self: Task, delivery_id: int) -> str:
        return deliver_one(_context(app), int(delivery_id))

    @app.task(name=TASK_SWEEP, acks_late=True, autoretry_for=(OperationalError,), max_retries=3)
    def sweep_task() -> dict[str, int]:
        return sweep(app)
