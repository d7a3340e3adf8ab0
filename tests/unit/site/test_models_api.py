"""The registry over HTTP: /api/models, /api/monitoring/models and the monitoring page's
champion-vs-challengers table."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.unit.site.test_compare_and_safety import scored_site  # noqa: F401 - fixture
from worklist.accounts import create_token
from worklist.http.app import create_app
from worklist.tables import User


def test_models_and_comparison_over_http(scored_site, session_factory, site_settings, site) -> None:  # noqa: F811
    with session_factory() as s:
        user = s.scalar(select(User).where(User.username == "rad1"))
        token, _ = create_token(s, username=user.username, name="t")
        s.commit()
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(site_settings, session_factory)) as client:
        rows = client.get("/api/models", headers=auth).json()
        assert [(r["name"], r["role"]) for r in rows] == [
            ("configured", "champion"),
            ("inverted", "shadow"),
            ("gentle", "shadow"),
        ]
        report = client.get("/api/monitoring/models?n_boot=50", headers=auth).json()
        assert report["champion"] == "configured"
        assert {c["challenger"] for c in report["comparisons"]} == {"inverted", "gentle"}
        assert client.get("/api/monitoring/models").status_code == 401


def test_undefined_metrics_are_null_in_json_and_the_page_renders(
    site, session_factory, site_settings, actor, make_model, tiny_classifier
) -> None:
    """Only normal studies labelled: sensitivity and ROC-AUC are undefined (null)."""
    from triage.tasks import WorkerContext, shadow_score
    from worklist.model_registry import add_model
    from worklist.tables import TriageResult

    ctx = WorkerContext(site_settings, session_factory=session_factory)
    ctx.models.refresh(session_factory)
    with session_factory.begin() as s:
        add_model(
            s,
            path=make_model("other", weight=2.0),
            models_dir=site_settings.data_dir / "m",
            actor=actor,
            operating_point="balanced",
            shadow=True,
        )
    for _ in range(3):
        study_id = site.study(label="normal", classifier=tiny_classifier)
        with session_factory() as s:
            rid = s.scalar(select(TriageResult.id).where(TriageResult.study_id == study_id))
        shadow_score(ctx, rid)
    with session_factory() as s:
        token, _ = create_token(s, username="rad1", name="t")
        s.commit()
    with TestClient(create_app(site_settings, session_factory)) as client:
        r = client.get(
            "/api/monitoring/models?n_boot=20", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text
        overall = r.json()["comparisons"][0]["overall"]
        assert overall["n"] == 3 and overall["metrics"]["roc_auc"]["champion"]["value"] is None
    from worklist.model_compare import compare_registered, format_comparison

    with session_factory() as s:
        text = format_comparison(compare_registered(s, operating_point="balanced", n_boot=20))
    assert "roc_auc" in text and "n/a" in text


def test_model_card_is_the_champions(
    session_factory, site_settings, site, actor, make_model, tiny_classifier
) -> None:
    from triage.tasks import WorkerContext
    from worklist.model_registry import add_model, promote

    WorkerContext(site_settings, session_factory=session_factory).models.refresh(session_factory)
    site.study(label="normal", classifier=tiny_classifier)  # creates the radiologist
    with session_factory.begin() as s:
        add_model(
            s,
            path=make_model("next", weight=2.0),
            models_dir=site_settings.data_dir / "m",
            actor=actor,
            operating_point="balanced",
            shadow=True,
        )
        promote(s, name="next", actor=actor, force=True, reason="test")
    with session_factory() as s:
        token, _ = create_token(s, username="rad1", name="t")
        s.commit()
    with TestClient(create_app(site_settings, session_factory)) as client:
        card = client.get("/api/model-card", headers={"Authorization": f"Bearer {token}"}).json()
    assert card["name"] == "next"
