"""The registry's models: which decides, which score in shadow, and how they compare."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from worklist.audit import Action
from worklist.core.settings import Settings
from worklist.http.deps import Reader, SessionDep, SettingsDep, audited
from worklist.model_compare import compare_inputs, comparison_inputs
from worklist.model_registry import list_models

router = APIRouter(tags=["models"])


@router.get("/api/models")
def models(_principal: Reader, db: SessionDep) -> list[dict[str, Any]]:
    """Every registered model: role (champion, shadow, retired), name, version, sha256."""
    return [
        {
            "name": m.name,
            "version": m.version,
            "role": m.role,
            "sha256": m.sha256,
            "added_at": m.added_at.isoformat(),
            "promoted_at": m.promoted_at.isoformat() if m.promoted_at else None,
        }
        for m in list_models(db)
    ]


def champion_vs_challengers(
    db: Any, settings: Settings, *, since: datetime | None = None, n_boot: int = 200
) -> dict[str, Any]:
    """The champion against each shadow model at the node's operating point.

    The request's transaction is committed once the inputs are read, so that the
    bootstrap holds no database lock (SQLite).
    """
    inputs = comparison_inputs(db, since=since)
    db.commit()
    return compare_inputs(inputs, operating_point=settings.operating_point, n_boot=n_boot)


@router.get("/api/monitoring/models", tags=["monitoring"])
def monitoring_models(
    principal: Reader,
    db: SessionDep,
    settings: SettingsDep,
    since: datetime | None = None,
    n_boot: Annotated[int, Query(ge=0, le=2000)] = 200,
) -> dict[str, Any]:
    """The champion against each shadow model on the radiologist-labelled studies both
    scored: ROC-AUC, Brier, sensitivity/specificity per operating point, by age band,
    sex and view, with 95 % bootstrap intervals and paired differences."""
    report = champion_vs_challengers(db, settings, since=since, n_boot=n_boot)
    audited(db, principal, Action.VIEW_MONITORING, detail={"models": True})
    return report
