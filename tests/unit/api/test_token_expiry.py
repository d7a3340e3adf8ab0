"""``triage-node token add``: a token that never expires is an explicit choice
(``--no-expiry``); ``--expires-days`` must be positive (issue 13, point 12)."""

from __future__ import annotations

import io
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from worklist.tables import ApiToken


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``triage-node`` main() over a fresh data directory with one service account."""
    from triage.cli import main

    for key in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("another long passphrase\n"))
    assert main(["user", "add", "ris", "--role", "service", "--password-stdin"]) == 0
    return main


def _tokens(tmp_path: Path) -> list[ApiToken]:
    from worklist.core.db import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'triage.db'}")
    try:
        with make_session_factory(engine)() as session:
            rows = list(session.scalars(select(ApiToken)))
            session.expunge_all()
            return rows
    finally:
        engine.dispose()


@pytest.mark.parametrize("days", ["0", "-1", "0.0", "nan"])
def test_zero_or_negative_expiry_is_refused(
    cli, tmp_path: Path, days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["token", "add", "--user", "ris", "--name", "RIS", "--expires-days", days])
    assert exited.value.code == 2
    assert "--expires-days" in capsys.readouterr().err
    assert _tokens(tmp_path) == []


def test_a_token_needs_an_expiry_or_an_explicit_no_expiry(
    cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["token", "add", "--user", "ris", "--name", "RIS"])
    assert exited.value.code == 2
    assert "--no-expiry" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(
            ["token", "add", "--user", "ris", "--name", "RIS", "--no-expiry", "--expires-days", "3"]
        )
    assert _tokens(tmp_path) == []

    assert cli(["token", "add", "--user", "ris", "--name", "RIS", "--no-expiry"]) == 0
    assert cli(["token", "add", "--user", "ris", "--name", "RIS", "--expires-days", "0.5"]) == 0
    forever, half_day = sorted(_tokens(tmp_path), key=lambda t: t.id)
    assert forever.expires_at is None
    lifetime = half_day.expires_at - half_day.created_at
    assert timedelta(hours=11, minutes=59) < lifetime <= timedelta(hours=12, seconds=5)
