"""Triage workers: select, infer, score, write the SR, deliver it.

Public API (plain functions are testable without a network or a broker):

- :mod:`triage.selection`: ``select_instance(ds) -> Eligible | Skipped``
- :mod:`triage.scoring`: ``score_study(logits, calibrate=, threshold=, operating_point=, how=)``
- :mod:`triage.sr`: ``build_sr(content, evidence)``, ``write_sr``, ``sr_uids``, ``read_sr_summary``
- :mod:`triage.inference`: ``get_classifier(settings)`` (one session per process)
- :mod:`triage.pipeline`: ``triage_study(session_factory, settings, classifier, study_id,
  revision)``, with ``write_study_sr`` and ``result_record``
- :mod:`triage.delivery`: ``store_file(path, destination)`` (C-STORE SCU), ``retry_delay``
- :mod:`triage.tasks`: the tasks; :mod:`triage.celery_app`: ``make_celery(settings)``, the
  app with them registered
- :mod:`triage.worker`: ``run_worker(settings, queues, concurrency)``,
  ``start_embedded_worker(settings) -> EmbeddedWorker`` (``.stop()``)

Nothing here runs at import time.
"""
