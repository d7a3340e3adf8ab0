"""The model registry: add, list, promote, rollback, the checks that refuse a model,
and a worker that follows the champion without a restart (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from worklist.model_registry import (
    PromotionRefused,
    RegistryError,
    active_models,
    add_model,
    ensure_champion,
    list_models,
    promote,
    rollback,
)
from worklist.tables import AuditEvent, ModelEntry, ModelPromotion


def _count(session_factory, table) -> int:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return int(s.scalar(select(func.count()).select_from(table)))


def _add(session_factory, path: Path, models_dir: Path, actor, **kw):  # type: ignore[no-untyped-def]
    with session_factory.begin() as s:
        e = add_model(
            s, path=path, models_dir=models_dir, actor=actor, operating_point="balanced", **kw
        )
        return e.name, e.role, e.sha256


def test_add_list_promote_rollback(session_factory, make_model, actor, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    a = _add(session_factory, make_model("model-a", weight=4.0), models_dir, actor)
    b = _add(session_factory, make_model("model-b", weight=-4.0), models_dir, actor, shadow=True)
    c = _add(session_factory, make_model("model-c", weight=1.0), models_dir, actor)
    assert (a[1], b[1], c[1]) == ("champion", "shadow", "retired")
    with session_factory() as s:
        assert [(m.name, m.role) for m in list_models(s)] == [
            ("model-a", "champion"),
            ("model-b", "shadow"),
            ("model-c", "retired"),
        ]
        champion, shadows = active_models(s)
        assert champion.name == "model-a" and [x.name for x in shadows] == ["model-b"]
        # The registry keeps its own copy, named by the weights hash.
        assert Path(champion.path).parent == models_dir.resolve()
        assert Path(champion.path).name.startswith(a[2][:16])

    with session_factory.begin() as s:
        promote(s, name="model-b", actor=actor)
    with session_factory() as s:
        champion, shadows = active_models(s)
        assert champion.name == "model-b"
        assert [x.name for x in shadows] == ["model-a"]
    with session_factory.begin() as s:
        promote(s, name="model-c", actor=actor)
    # Rollbacks walk back one promotion at a time.
    with session_factory.begin() as s:
        rollback(s, actor=actor)
    with session_factory() as s:
        assert active_models(s)[0].name == "model-b"
    with session_factory.begin() as s:
        rollback(s, actor=actor)
    with session_factory() as s:
        assert active_models(s)[0].name == "model-a"
    with pytest.raises(RegistryError, match="nothing to roll back"), session_factory.begin() as s:
        rollback(s, actor=actor)
    with session_factory() as s:
        actions = [
            (e.action, e.username) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    assert [a for a, _ in actions] == ["model_add"] * 3 + ["model_promote"] * 2 + [
        "model_rollback"
    ] * 2
    assert {u for _, u in actions} == {"cli:tester"}


def test_card_without_operating_points_is_refused(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    path = make_model("no-points", operating_points={})
    with pytest.raises(RegistryError, match="no operating points"), session_factory.begin() as s:
        add_model(s, path=path, models_dir=tmp_path / "m", actor=actor, operating_point="balanced")
    assert _count(session_factory, ModelEntry) == 0
    assert _count(session_factory, AuditEvent) == 0
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_card_without_the_configured_operating_point_is_refused(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    path = make_model("only-balanced")
    with (
        pytest.raises(RegistryError, match="no operating point 'rule-out'"),
        session_factory.begin() as s,
    ):
        add_model(s, path=path, models_dir=tmp_path / "m", actor=actor, operating_point="rule-out")
    assert _count(session_factory, ModelEntry) == 0


def test_input_size_the_pipeline_cannot_feed_is_refused(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    from models.preprocess import PreprocessSpec

    # The graph takes 64 px images; the card says the pipeline should make 96 px ones.
    path = make_model("wrong-size", preprocessing=PreprocessSpec(input_size=96).to_dict())
    with pytest.raises(RegistryError, match=r"shape \(1, 96, 96\)"), session_factory.begin() as s:
        add_model(s, path=path, models_dir=tmp_path / "m", actor=actor, operating_point="balanced")
    assert _count(session_factory, ModelEntry) == 0


def test_same_weights_or_name_twice_is_refused(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    path = make_model("twice")
    _add(session_factory, path, tmp_path / "m", actor)
    with pytest.raises(RegistryError, match="registered already"), session_factory.begin() as s:
        add_model(s, path=path, models_dir=tmp_path / "m", actor=actor, operating_point="balanced")
    assert _count(session_factory, ModelEntry) == 1


def test_promote_unknown_name_changes_nothing(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    _add(session_factory, make_model("model-a"), tmp_path / "m", actor)
    with pytest.raises(RegistryError, match="no model named 'nope'"), session_factory.begin() as s:
        promote(s, name="nope", actor=actor)
    with session_factory() as s:
        assert active_models(s)[0].name == "model-a"
    assert _count(session_factory, ModelPromotion) == 0


def test_safety_rule_refuses_unless_forced_with_a_reason(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    _add(session_factory, make_model("model-a"), tmp_path / "m", actor)
    _add(session_factory, make_model("model-b", weight=2.0), tmp_path / "m", actor, shadow=True)

    def rule(session, champion, challenger):  # type: ignore[no-untyped-def]
        return [f"{challenger.name} less sensitive than {champion.name}"]

    with pytest.raises(PromotionRefused, match="less sensitive"), session_factory.begin() as s:
        promote(s, name="model-b", actor=actor, safety=rule)
    with pytest.raises(RegistryError, match="--reason"), session_factory.begin() as s:
        promote(s, name="model-b", actor=actor, safety=rule, force=True)
    with session_factory() as s:
        assert active_models(s)[0].name == "model-a"
    with session_factory.begin() as s:
        promote(s, name="model-b", actor=actor, safety=rule, force=True, reason="site lead: ok")
    with session_factory() as s:
        assert active_models(s)[0].name == "model-b"
        event = s.scalar(
            select(AuditEvent)
            .where(AuditEvent.action == "model_promote")
            .order_by(AuditEvent.id.desc())
        )
        detail = json.loads(event.detail)
        assert detail["forced"] is True and detail["reason"] == "site lead: ok"
        assert detail["violations"] == ["model-b less sensitive than model-a"]


def test_ensure_champion_registers_the_configured_model_once(
    session_factory, make_model, tmp_path: Path
) -> None:
    path = make_model("configured")
    for _ in range(2):
        champion = ensure_champion(
            session_factory, path=path, models_dir=tmp_path / "m", operating_point="balanced"
        )
        assert champion.name == "configured"
    assert _count(session_factory, ModelEntry) == 1


def test_worker_follows_the_champion_without_restart(
    session_factory, make_model, actor, tmp_path: Path
) -> None:
    from triage.registry_models import RegistryModels
    from worklist.core.settings import Settings

    configured = make_model("configured", weight=4.0)
    settings = Settings(data_dir=tmp_path / "data", model_path=configured)
    models = RegistryModels(settings, batch_size=4)
    first = models.refresh(session_factory)
    assert first.entry.name == "configured" and first.entry.role == "champion"
    _, _, sha = _add(
        session_factory,
        make_model("site", weight=-4.0),
        tmp_path / "data" / "models",
        actor,
        shadow=True,
    )
    again = models.refresh(session_factory)
    assert again.classifier is first.classifier  # nothing reloaded
    assert [s.entry.name for s in models.shadows] == ["site"]
    with session_factory.begin() as s:
        promote(s, name="site", actor=actor)
    after = models.refresh(session_factory)
    assert after.entry.name == "site" and after.classifier.sha256 == sha
    assert [s.entry.name for s in models.shadows] == ["configured"]


def _shipped_without_cam(path: Path) -> Path:
    """The shipped default as it was before the ``cam`` output (same weights)."""
    onnx = pytest.importorskip("onnx")
    from models.cam_output import CAM_OUTPUT, remove_output
    from models.card import embed_card, read_card
    from models.runtime import default_model_path

    card = read_card(default_model_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(remove_output(onnx.load(str(default_model_path())), CAM_OUTPUT), str(path))
    outputs = {k: v for k, v in card.outputs.items() if k != CAM_OUTPUT}
    embed_card(path, card.model_copy(update={"outputs": outputs}))
    return path


def test_an_upgraded_default_with_a_new_output_replaces_the_registry_copy(
    session_factory, tmp_path: Path
) -> None:
    """A node registered the default before it had a ``cam`` output; after the upgrade
    the registry's copy becomes the new file (same weights and card but for outputs),
    once; the champion, its weights hash and its decisions stay."""
    from models.runtime import Classifier, default_model_path
    from worklist.model_registry import refresh_champion_copy

    old = _shipped_without_cam(tmp_path / "old" / "cxr-triage-default.onnx")
    champion = ensure_champion(
        session_factory, path=old, models_dir=tmp_path / "m", operating_point="balanced"
    )
    assert not Classifier.load(champion.path).has_cam

    assert refresh_champion_copy(
        session_factory, path=default_model_path(), operating_point="balanced"
    )
    with session_factory() as session:
        after, _ = active_models(session)
    assert after is not None
    assert (after.id, after.sha256, after.path) == (champion.id, champion.sha256, champion.path)
    assert Classifier.load(after.path).has_cam
    assert not refresh_champion_copy(
        session_factory, path=default_model_path(), operating_point="balanced"
    )


def test_same_weights_with_another_calibration_is_not_swapped_in(
    session_factory, tmp_path: Path
) -> None:
    """Same weights but other thresholds is another model: the copy stays."""
    from models.card import embed_card, read_card
    from models.runtime import Classifier, default_model_path
    from worklist.model_registry import file_sha256, refresh_champion_copy

    old = _shipped_without_cam(tmp_path / "old" / "cxr-triage-default.onnx")
    champion = ensure_champion(
        session_factory, path=old, models_dir=tmp_path / "m", operating_point="balanced"
    )
    before = file_sha256(champion.path)
    recalibrated = tmp_path / "new" / "cxr-triage-default.onnx"
    recalibrated.parent.mkdir()
    recalibrated.write_bytes(default_model_path().read_bytes())
    card = read_card(recalibrated)
    points = {k: {**v, "threshold": 0.9} for k, v in card.operating_points.items()}
    embed_card(recalibrated, card.model_copy(update={"operating_points": points}))

    assert not refresh_champion_copy(session_factory, path=recalibrated, operating_point="balanced")
    assert file_sha256(champion.path) == before
    assert not Classifier.load(champion.path).has_cam
