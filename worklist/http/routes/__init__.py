"""The routes, one module per resource; :data:`ROUTERS` in the order the app includes
them.

=======================================  =============================================
``GET  /healthz``, ``/readyz``, ``/metrics``  liveness, readiness, Prometheus (no user)
``GET  /login``, ``POST /login|logout``  sign in and out (web page)
``GET  /api/me``                         the caller (and the session's CSRF token)
``GET  /api/openapi.json``               the API description
``GET  /api/worklist``                   the worklist (filters, priority order)
``GET  /api/studies/{uid}``              a study: images, result, deliveries, feedback
``GET  /api/studies/{uid}/images/{sop}/thumbnail``  PNG preview
``POST /api/studies/{uid}/claim``        claim for reading (``?force=true``: admins)
``POST /api/studies/{uid}/release``      give back
``POST /api/studies/{uid}/complete``     mark read
``POST /api/studies/{uid}/feedback``     radiologist's label, agree/disagree
``GET  /api/model-card``                 the active model card
``GET  /api/monitoring/agreement``       agreement, sensitivity, specificity by group
``GET  /api/monitoring/probabilities``   daily probability distribution (drift)
``GET  /api/models``                     the model registry (champion, shadows)
``GET  /api/monitoring/models``          champion vs shadow models on labelled studies
``GET  /api/monitoring/time-to-read``   turnaround by level and label, waits, over the cap
``GET  /api/audit``                      the audit log (admins)
``GET  /``, ``/studies/{uid}``, ``/monitoring``  the web pages
=======================================  =============================================

Every endpoint but the health ones and the sign-in page needs a user: a session cookie
(web page) or a bearer token (systems). Each view of patient data and each action is
audited (:func:`worklist.http.deps.audited`).
"""

from __future__ import annotations

from fastapi import APIRouter

from worklist.http.routes import (
    admin,
    auth,
    health,
    models,
    monitoring,
    pages,
    reading,
    studies,
    worklist,
)

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    auth.router,
    worklist.router,
    studies.router,
    reading.router,
    monitoring.router,
    models.router,
    admin.router,
    pages.router,
)
