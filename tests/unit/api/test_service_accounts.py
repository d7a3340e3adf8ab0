"""Accounts for automation: token-only service accounts, ``token list``,
``--password-stdin`` and the password rule, through the real CLI and the real app."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from worklist.accounts import AccountError, create_user
from worklist.tables import AuditEvent, User

PASSPHRASE = "a long enough passphrase"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    return tmp_path


def test_service_accounts_are_token_only(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from triage.cli import main
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.settings import load_settings
    from worklist.http.app import create_app

    # No password is asked for (stdin would block the test if it were read).
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["user", "add", "ris", "--role", "service"]) == 0
    assert "token-only" in capsys.readouterr().err
    assert main(["token", "add", "--user", "ris", "--name", "RIS"]) == 0
    token = capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSPHRASE + "\n"))
    assert main(["user", "passwd", "ris", "--password-stdin"]) == 1
    assert "token-only" in capsys.readouterr().err

    settings = load_settings(data_dir=cli_env, session_secret="cli-test-secret-0123456789")
    engine = make_engine(settings.effective_database_url)
    try:
        factory = make_session_factory(engine)
        with TestClient(create_app(settings, factory)) as client:
            refused = client.post(
                "/login", data={"username": "ris", "password": "anything at all 123"}
            )
            assert refused.status_code == 403
            assert (
                "ris is a service account: it uses a bearer token and cannot sign in to the"
                " web page." in refused.text
            )
            assert "session" not in refused.cookies
            me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["username"] == "ris"
            rows = client.get("/api/worklist", headers={"Authorization": f"Bearer {token}"})
            assert rows.status_code == 200
        with factory() as session:
            assert session.scalar(select(User.password_hash).where(User.username == "ris")) is None
            denied = session.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "login", AuditEvent.outcome == "denied"
                )
            ).all()
            assert [e.username for e in denied] == ["ris"]
            with pytest.raises(AccountError, match="token-only"):
                create_user(session, username="pacs", password=PASSPHRASE, role="service")
            with pytest.raises(AccountError, match="password is needed"):
                create_user(session, username="bob", password=None, role="radiologist")
    finally:
        engine.dispose()


def test_token_list_and_password_stdin(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from triage.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSPHRASE + "\n"))
    assert main(["user", "add", "alice", "--role", "admin", "--password-stdin"]) == 0
    assert main(["user", "add", "ris", "--role", "service"]) == 0
    assert main(["token", "add", "--user", "ris", "--name", "RIS"]) == 0
    assert main(["token", "add", "--user", "alice", "--name", "script", "--expires-days", "1"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()
    assert main(["token", "revoke", "1"]) == 0
    capsys.readouterr()
    assert main(["token", "list"]) == 0
    listed = capsys.readouterr().out
    rows = [line.split("\t") for line in listed.splitlines()]
    assert [(r[0], r[1], r[2], r[6]) for r in rows] == [
        ("1", "ris", "RIS", "revoked"),
        ("2", "alice", "script", "active"),
    ]
    assert rows[0][4] == "-" and rows[1][4].endswith("UTC")
    for token in secret:  # the list never shows a token
        assert token not in listed


def test_readme_states_the_password_rule() -> None:
    from tests.conftest import REPO_ROOT
    from worklist.accounts import MIN_PASSWORD_LENGTH

    readme = (REPO_ROOT / "README.md").read_text()
    assert f"at least {MIN_PASSWORD_LENGTH} characters" in readme
    assert "--password-stdin" in readme and "token list" in readme
