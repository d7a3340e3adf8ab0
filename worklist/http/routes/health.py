"""Liveness, readiness and metrics: public, for load balancers and Prometheus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worklist.http.readiness import check_database

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> Any:
    """Readiness: the database answers, the broker accepts a connection, the model
    loads (its card is read through ONNX Runtime)."""
    state = request.app.state
    card, model = state.model_card.get()
    problems = {
        "database": check_database(state.session_factory),
        "broker": state.broker_check.problem(),
        "model": model,
    }
    body: dict[str, Any] = {name: problem or "ok" for name, problem in problems.items()}
    if card is not None:
        body |= {"model_name": card.get("name"), "model_version": card.get("version")}
    ready = not any(problems.values())
    body["status"] = "ok" if ready else "unavailable"
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus metrics (names prefixed ``triage_``)."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
