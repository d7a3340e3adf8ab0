"""Shadow scoring: each shadow model scores each triaged study beside the champion,
records its model and operating point, and is never delivered nor the decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from triage.tasks import WorkerContext, shadow_score
from worklist.model_registry import add_model
from worklist.tables import Delivery, ShadowResult, TriageResult


def test_shadow_models_score_beside_the_champion(
    site, session_factory, site_settings, actor, make_model, tiny_classifier
) -> None:
    settings = site_settings.model_copy(update={"destinations": []})
    ctx = WorkerContext(settings, session_factory=session_factory)
    ctx.models.refresh(session_factory)  # registers the configured model as champion
    with session_factory.begin() as s:
        for name, weight in (("shadow-neg", -4.0), ("shadow-half", 2.0)):
            add_model(
                s,
                path=make_model(name, weight=weight),
                models_dir=settings.data_dir / "models",
                actor=actor,
                operating_point="balanced",
                shadow=True,
            )
    study_id = site.study(label=None, classifier=tiny_classifier, brightness=0.8)
    with session_factory() as s:
        result = s.scalar(select(TriageResult).where(TriageResult.study_id == study_id))
        deliveries_before = s.scalar(select(func.count()).select_from(Delivery))
    assert shadow_score(ctx, result.id) == 2
    assert shadow_score(ctx, result.id) == 0  # idempotent
    with session_factory() as s:
        rows = {r.model_name: r for r in s.scalars(select(ShadowResult))}
        assert s.scalar(select(func.count()).select_from(Delivery)) == deliveries_before
        champion = s.get(TriageResult, result.id)
    assert set(rows) == {"shadow-neg", "shadow-half"}
    # The tiny model's logit is weight x mean(preprocessed image): the scores mirror it.
    assert rows["shadow-neg"].score == pytest.approx(-champion.score, rel=1e-4)
    assert rows["shadow-half"].score == pytest.approx(champion.score / 2, rel=1e-4)
    for row in rows.values():
        assert row.operating_point == "balanced" and row.threshold == pytest.approx(0.5)
        assert row.result_id == result.id and row.study_id == study_id and row.images == 1
        assert row.decision == ("abnormal" if row.probability >= 0.5 else "normal")
    assert rows["shadow-neg"].decision != champion.decision  # the decision stays the champion's


def test_a_broken_shadow_model_never_holds_back(
    site, session_factory, site_settings, actor, make_model, tiny_classifier, tmp_path: Path
) -> None:
    ctx = WorkerContext(site_settings, session_factory=session_factory)
    ctx.models.refresh(session_factory)
    with session_factory.begin() as s:
        entry = add_model(
            s,
            path=make_model("vanishing", weight=1.0),
            models_dir=tmp_path / "elsewhere",
            actor=actor,
            operating_point="balanced",
            shadow=True,
        )
        Path(entry.path).unlink()
    study_id = site.study(label=None, classifier=tiny_classifier)
    with session_factory() as s:
        result_id = s.scalar(select(TriageResult.id).where(TriageResult.study_id == study_id))
    assert shadow_score(ctx, result_id) == 0
    assert ctx.models.refresh(session_factory).entry.name == "configured"
