"""model compare on the labelled studies, and the safety rule of a promotion."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from models.compare import ModelScores, compare_models
from triage.tasks import WorkerContext, shadow_score
from worklist.model_compare import compare_registered, format_comparison
from worklist.model_registry import PromotionRefused, active_models, add_model, promote
from worklist.model_safety import promotion_violations, safety_rule
from worklist.tables import TriageResult


@pytest.fixture
def scored_site(site, session_factory, site_settings, actor, make_model, tiny_classifier):  # type: ignore[no-untyped-def]
    """Champion 'configured' (right), shadows 'inverted' (wrong way) and 'gentle' (right,
    less confident); 16 labelled studies scored by all three, 2 unlabelled."""
    ctx = WorkerContext(site_settings, session_factory=session_factory)
    ctx.models.refresh(session_factory)
    with session_factory.begin() as s:
        for name, weight in (("inverted", -4.0), ("gentle", 1.5)):
            add_model(
                s,
                path=make_model(name, weight=weight),
                models_dir=site_settings.data_dir / "m",
                actor=actor,
                operating_point="balanced",
                shadow=True,
            )
    for i in range(18):
        label = "abnormal" if i % 2 else "normal"
        study_id = site.study(
            label=label if i < 16 else None,
            classifier=tiny_classifier,
            brightness=0.8 if label == "abnormal" else 0.2,
            sex="F" if i % 4 < 2 else "M",
            age="030Y" if i < 8 else "070Y",
            view="PA",
        )
        with session_factory() as s:
            result_id = s.scalar(select(TriageResult.id).where(TriageResult.study_id == study_id))
        assert shadow_score(ctx, result_id) == 2
    return ctx


def test_compare_reports_each_challenger_with_intervals(scored_site, session_factory) -> None:
    with session_factory() as s:
        report = compare_registered(s, operating_point="balanced", n_boot=200)
    assert report["champion"] == "configured" and report["labelled_studies"] == 16
    by_name = {c["challenger"]: c for c in report["comparisons"]}
    assert set(by_name) == {"inverted", "gentle"}
    inv = by_name["inverted"]["overall"]
    assert inv["n"] == 16 and inv["n_abnormal"] == 8
    assert inv["metrics"]["roc_auc"]["champion"]["value"] == pytest.approx(1.0)
    assert inv["metrics"]["roc_auc"]["challenger"]["value"] == pytest.approx(0.0)
    assert inv["metrics"]["roc_auc"]["difference"]["p_value"] < 0.01
    assert inv["metrics"]["sensitivity@balanced"]["challenger"]["value"] == 0.0
    gentle = by_name["gentle"]["overall"]["metrics"]
    assert gentle["sensitivity@balanced"]["difference"]["value"] == 0.0
    assert gentle["brier"]["challenger"]["value"] > gentle["brier"]["champion"]["value"]
    subgroups = by_name["inverted"]["subgroups"]
    assert set(subgroups) == {"age_band", "sex", "view"}
    assert set(subgroups["age_band"]) == {"18-39", "60-79"} and subgroups["sex"]["F"]["n"] == 8
    text = format_comparison(report)
    assert "inverted vs configured: 16 studies" in text and "age_band=60-79" in text


def test_promotion_of_a_less_sensitive_model_is_refused(
    scored_site, session_factory, actor
) -> None:
    rule = safety_rule("balanced", n_boot=50)
    with (
        pytest.raises(PromotionRefused, match="sensitivity at balanced 0.000 is lower"),
        session_factory.begin() as s,
    ):
        promote(s, name="inverted", actor=actor, safety=rule)
    with session_factory() as s:
        assert active_models(s)[0].name == "configured"
    with session_factory.begin() as s:
        promote(s, name="gentle", actor=actor, safety=rule)  # as sensitive: allowed
    with session_factory() as s:
        assert active_models(s)[0].name == "gentle"


def test_promotion_without_labelled_evidence_is_refused(
    site, session_factory, site_settings, actor, make_model
) -> None:
    WorkerContext(site_settings, session_factory=session_factory).models.refresh(session_factory)
    with session_factory.begin() as s:
        add_model(
            s,
            path=make_model("new", weight=2.0),
            models_dir=site_settings.data_dir / "m",
            actor=actor,
            operating_point="balanced",
            shadow=True,
        )
    with (
        pytest.raises(PromotionRefused, match="no radiologist-labelled study"),
        session_factory.begin() as s,
    ):
        promote(s, name="new", actor=actor, safety=safety_rule("balanced", n_boot=10))


def test_a_subgroup_whose_underdiagnosis_rises_refuses() -> None:
    points = {"balanced": 0.5}
    y = np.array([1, 1, 1, 0] * 2 + [1, 0] * 10)
    sex = ["F"] * 8 + ["M"] * 20
    champ = np.where(y == 1, 0.9, 0.1).astype(float)
    chal = champ.copy()
    chal[0] = 0.1  # one abnormal woman of 6 missed: her group's rate rises by 0.167
    report = compare_models(
        y,
        ModelScores("a", champ, points),
        ModelScores("b", chal, points),
        applied="balanced",
        groups={"sex": sex},
        n_boot=20,
    )
    reasons = promotion_violations(report)
    assert any("underdiagnosis rate of sex F rises from 0.000 to 0.167" in r for r in reasons)
    assert not any("sex M" in r for r in reasons)
    # Within the margin: 1 of 30 abnormal missed in a group is 0.033 and passes.
    y2 = np.array([1] * 30 + [0] * 5)
    c1 = np.where(y2 == 1, 0.9, 0.1)
    c2 = c1.copy()
    c2[0] = 0.1
    rep2 = compare_models(
        y2,
        ModelScores("a", c1, points),
        ModelScores("b", c2, points),
        applied="balanced",
        groups={"sex": ["F"] * 35},
        n_boot=20,
    )
    reasons2 = promotion_violations(rep2)
    assert not any("underdiagnosis" in r for r in reasons2)
    assert any("sensitivity at balanced" in r for r in reasons2)  # any overall drop refuses
