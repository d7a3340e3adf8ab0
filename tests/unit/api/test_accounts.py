"""Accounts: the CLI, password hashing and policy, and the migration of the tables."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from worklist.accounts import (
    AccountError,
    create_token,
    create_user,
    hash_password,
    verify_password,
)
from worklist.tables import User


def test_passwords_are_argon2id_hashed_and_checked() -> None:
    encoded = hash_password("a long enough passphrase")
    assert encoded.startswith("$argon2id$")
    assert "passphrase" not in encoded
    assert verify_password(encoded, "a long enough passphrase")
    assert not verify_password(encoded, "a long enough passphrasE")
    assert not verify_password(None, "anything at all")
    assert not verify_password("not-a-hash", "anything at all")


@pytest.mark.parametrize(
    ("username", "password", "role", "message"),
    [
        ("bob", "short", "radiologist", "at least 12"),
        ("bob", "bob-is-my-password", "radiologist", "user name"),
        ("bob", "aaaaaaaaaaaaaaaa", "radiologist", "too simple"),
        ("bob", "a long enough passphrase", "superuser", "role"),
        ("bad name", "a long enough passphrase", "admin", "user name"),
    ],
)
def test_weak_or_invalid_accounts_are_refused(
    session_factory: Any, username: str, password: str, role: str, message: str
) -> None:
    with session_factory() as session, pytest.raises(AccountError, match=message):
        create_user(session, username=username, password=password, role=role)


def test_duplicate_user_and_token_for_unknown_user(session_factory: Any) -> None:
    with session_factory() as session:
        create_user(session, username="carol", password="a long enough passphrase", role="admin")
        with pytest.raises(AccountError, match="exists"):
            create_user(session, username="carol", password="another long passphrase", role="admin")
        with pytest.raises(AccountError, match="no active user"):
            create_token(session, username="nobody", name="RIS")


def test_cli_user_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from triage.cli import main
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.settings import load_settings
    from worklist.http.app import create_app

    for key in [k for k in __import__("os").environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "add", "alice", "--role", "admin", "--password-stdin"]) == 1
    assert "at least 12" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase\n"))
    assert main(["user", "add", "alice", "--role", "admin", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("another long passphrase\n"))
    assert main(["user", "add", "ris", "--role", "service", "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["token", "add", "--user", "ris", "--name", "RIS"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("tnt_") and len(token) > 40
    assert main(["user", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice\tadmin\tactive", "ris\tservice\tactive"]

    settings = load_settings(data_dir=tmp_path, session_secret="cli-test-secret-0123456789")
    engine = make_engine(settings.effective_database_url)
    try:
        factory = make_session_factory(engine)
        with TestClient(create_app(settings, factory)) as client:
            me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["username"] == "ris"
            signed_in = client.post(
                "/login",
                data={"username": "alice", "password": "a long enough passphrase"},
                follow_redirects=False,
            )
            assert signed_in.status_code == 303
        assert main(["token", "revoke", "1"]) == 0
        assert main(["user", "disable", "alice"]) == 0
        with TestClient(create_app(settings, factory)) as client:
            assert (
                client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code
                == 401
            )
            refused = client.post(
                "/login", data={"username": "alice", "password": "a long enough passphrase"}
            )
            assert refused.status_code == 401
        with factory() as session:
            assert session.scalar(select(User.active).where(User.username == "alice")) is False
    finally:
        engine.dispose()


def test_migration_0003_matches_the_models(migrated_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worklist import tables
    from worklist.core.db import Base, make_engine

    mine = {
        t.name
        for t in Base.metadata.sorted_tables
        if t.name
        in {"users", "api_tokens", "web_sessions", "audit_events", "study_reads", "feedback"}
    }
    assert len(mine) == 6
    assert tables.User.__tablename__ in mine
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()

    relevant = [d for d in diff if any(f"'{name}'" in repr(d) for name in mine)]
    assert relevant == []
