"""No secret with a working default: the settings ship no secret value, a fresh
database has no account, and the API lets nobody in with the usual default
credentials (other parts of this point are covered in tests/unit/deploy and
tests/unit/api, see the reliability map in the report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from worklist.core.settings import Settings, load_settings

SECRET_WORDS = ("secret", "password", "token", "credential", "passphrase")


def test_settings_ship_no_secret_value(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(data_dir=tmp_path)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            assert value.get_secret_value() == "", f"{name} has a default secret"
        elif any(word in name for word in SECRET_WORDS):
            assert not value, f"{name} has a default value"
    # Neither URL carries a password by default.
    assert "@" not in settings.effective_database_url
    assert "@" not in settings.effective_broker_url


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fresh_node_has_no_account_and_no_default_login(
    session_factory: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from worklist.http.app import create_app
    from worklist.tables import User

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0
    settings = load_settings(data_dir=tmp_path)
    with TestClient(create_app(settings, session_factory)) as client:
        assert client.get("/api/worklist").status_code == 401
        for user, password in (("admin", "admin"), ("admin", ""), ("root", "root")):
            answer = client.post(
                "/login", data={"username": user, "password": password}, follow_redirects=False
            )
            assert answer.status_code == 401, (user, password)
            assert "set-cookie" not in answer.headers
