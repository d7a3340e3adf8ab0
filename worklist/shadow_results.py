"""Shadow models' scores beside the champion's results (table ``shadow_results``).

A shadow score is stored for comparison only: it has no SR, no delivery, and the
worklist never shows it as the decision. Plain functions over a session; the caller
owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from worklist.core.clock import utcnow
from worklist.tables import Instance, ShadowResult, TriageImage, TriageResult, TriageStatus

__all__ = ["ShadowScore", "evaluated_files", "save_shadow_score", "scored_models"]


@dataclass(frozen=True)
class ShadowScore:
    """One shadow model's score of one triage result."""

    result_id: int
    model_id: int | None
    model_name: str
    model_version: str
    model_sha256: str
    operating_point: str
    threshold: float
    probability: float
    score: float
    decision: str
    images: int


def evaluated_files(session: Session, *, result_id: int) -> tuple[int, int, list[str]] | None:
    """The study, revision and spool files of the images a triaged result evaluated.

    Parameters
    ----------
    session : Session
    result_id : int

    Returns
    -------
    tuple or None
        ``(study_id, revision, paths)``; None when the result is not ``triaged``.
    """
    result = session.get(TriageResult, result_id)
    if result is None or result.status != TriageStatus.TRIAGED.value:
        return None
    paths = session.scalars(
        select(Instance.file_path)
        .join(TriageImage, TriageImage.instance_id == Instance.id)
        .where(TriageImage.result_id == result_id, TriageImage.evaluated.is_(True))
        .order_by(TriageImage.id)
    ).all()
    return result.study_id, result.revision, list(paths)


def scored_models(session: Session, *, result_id: int) -> set[str]:
    """Weights hashes of the shadow models that scored ``result_id`` already."""
    return set(
        session.scalars(
            select(ShadowResult.model_sha256).where(ShadowResult.result_id == result_id)
        )
    )


def save_shadow_score(
    session: Session, *, score: ShadowScore, study_id: int, revision: int
) -> ShadowResult:
    """Insert a shadow score (the unique (result, model) pair refuses a second one).

    Parameters
    ----------
    session : Session
    score : ShadowScore
    study_id, revision : int

    Returns
    -------
    ShadowResult
    """
    row = ShadowResult(
        result_id=score.result_id,
        study_id=study_id,
        revision=revision,
        model_id=score.model_id,
        model_name=score.model_name,
        model_version=score.model_version,
        model_sha256=score.model_sha256,
        operating_point=score.operating_point,
        threshold=score.threshold,
        probability=score.probability,
        score=score.score,
        decision=score.decision,
        images=score.images,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row
