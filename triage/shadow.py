"""Shadow scoring: every shadow model scores every triaged study beside the champion.

:func:`score_shadows` is called after the champion's result is recorded. It reads the
images the champion evaluated, preprocesses them as each shadow model's card says,
scores the study the same way (aggregation, calibration, the configured operating
point of that model's card) and stores one :class:`~worklist.tables.ShadowResult` per
model. It never writes an SR or an outbox row. A shadow model that fails is logged and
skipped: it never holds back the champion's result. Idempotent: a model that scored
the result already is not run again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.preprocess import preprocess_dataset
from triage.registry_models import LoadedModel
from triage.scoring import score_study
from worklist.core.settings import Settings
from worklist.shadow_results import ShadowScore, evaluated_files, save_shadow_score, scored_models

__all__ = ["score_shadows"]

log = logging.getLogger(__name__)


def _score_one(
    model: LoadedModel,
    datasets: Sequence[Dataset],
    *,
    result_id: int,
    settings: Settings,
    aggregation: str,
) -> ShadowScore:
    clf = model.classifier
    card = clf.card
    batch = np.stack([preprocess_dataset(ds, card.preprocess_spec) for ds in datasets])
    logits = np.asarray(clf.predict_logits(batch.astype(np.float32)), np.float32).reshape(-1)
    point = settings.operating_point
    scored = score_study(
        logits,
        calibrate=card.calibrate,
        threshold=card.threshold(point),
        operating_point=point,
        how=aggregation,
    )
    return ShadowScore(
        result_id=result_id,
        model_id=model.entry.id,
        model_name=model.entry.name,
        model_version=model.entry.version,
        model_sha256=model.entry.sha256,
        operating_point=point,
        threshold=scored.threshold,
        probability=scored.probability,
        score=scored.score,
        decision=scored.decision.value,
        images=len(datasets),
    )


def score_shadows(
    session_factory: sessionmaker[Session],
    settings: Settings,
    shadows: Sequence[LoadedModel],
    result_id: int,
    *,
    aggregation: str = "max",
) -> int:
    """Score a triaged result with every shadow model that has not scored it yet.

    Parameters
    ----------
    session_factory : sessionmaker
    settings : Settings
        ``operating_point`` is used.
    shadows : sequence of LoadedModel
    result_id : int
        The champion's result.
    aggregation : str

    Returns
    -------
    int
        Shadow scores stored.
    """
    if not shadows:
        return 0
    with session_factory() as session:
        found = evaluated_files(session, result_id=result_id)
        done = scored_models(session, result_id=result_id) if found else set()
    if not found or not found[2]:
        return 0
    todo = [m for m in shadows if m.entry.sha256 not in done]
    if not todo:
        return 0
    study_id, revision, paths = found
    try:
        datasets = [pydicom.dcmread(p) for p in paths]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        log.warning("shadow scoring of study %s skipped: %s", study_id, exc)
        return 0
    stored = 0
    for model in todo:
        try:
            score = _score_one(
                model, datasets, result_id=result_id, settings=settings, aggregation=aggregation
            )
        except Exception as exc:  # noqa: BLE001 - a failing shadow never holds back the champion
            log.error("shadow model %s failed on study %s: %s", model.entry.name, study_id, exc)
            continue
        try:
            with session_factory.begin() as session:
                save_shadow_score(session, score=score, study_id=study_id, revision=revision)
        except IntegrityError:
            continue  # another delivery of the task stored it meanwhile
        stored += 1
        log.info(
            "study %s revision %s: shadow %s p=%.3f (%s)",
            study_id,
            revision,
            model.entry.name,
            score.probability,
            score.decision,
        )
    return stored
