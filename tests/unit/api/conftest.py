"""Fixtures of the API tests: an app on a migrated database (SQLite and PostgreSQL),
users, tokens and a seeded worklist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.factories import Made, seed_worklist
from worklist.accounts import create_token, create_user
from worklist.core.settings import Settings, load_settings
from worklist.http.app import create_app

PASSWORD = "correct horse battery staple"


def tiny_model(directory: Path) -> Path:
    """A real (tiny) ONNX model with its model card beside it."""
    import onnx
    from onnx import TensorProto, helper

    from models.card import ModelCard, sidecar_path, write_card_json

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = directory / "tiny.onnx"
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    write_card_json(
        sidecar_path(path),
        ModelCard(
            name="tiny-test",
            version="0.0.1",
            intended_use="tests only",
            operating_points={"balanced": {"threshold": 0.5}},
        ),
    )
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of a node under test (viewer template set, tiny model)."""
    return load_settings(
        data_dir=tmp_path / "data",
        session_secret="a-test-only-secret-0123456789",
        viewer_url_template="http://viewer.test/ohif/viewer?StudyInstanceUIDs={study_uid}",
        model_path=tiny_model(tmp_path / "model"),
        login_max_failures=3,
    )


@pytest.fixture
def app(settings: Settings, session_factory: Any) -> Any:
    """The app on the migrated database."""
    return create_app(settings, session_factory)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    """An anonymous client."""
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def users(session_factory: Any) -> dict[str, str]:
    """Accounts (radiologists ``rad1``/``rad2``, ``admin``, ``ris`` service) and tokens;
    returns role name -> bearer token."""
    tokens = {}
    with session_factory() as session:
        for name, role in (
            ("rad1", "radiologist"),
            ("rad2", "radiologist"),
            ("admin", "admin"),
            ("ris", "service"),
        ):
            create_user(
                session,
                username=name,
                password=None if role == "service" else PASSWORD,
                role=role,
            )
            tokens[name], _row = create_token(session, username=name, name=f"{name} token")
        session.commit()
    return tokens


@pytest.fixture
def seeded(session_factory: Any, settings: Settings) -> dict[str, Made]:
    """The seeded worklist (see :func:`seed_worklist`)."""
    with session_factory() as session:
        return seed_worklist(session, settings.spool_dir)


def bearer(token: str) -> dict[str, str]:
    """Authorization header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}
