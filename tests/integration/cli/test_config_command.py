"""``triage-node config``: effective values, each with its variable and meaning; secrets
masked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from models.runtime import default_model_path
from tests.conftest import environment_without_settings
from tests.integration.cli.node import TRIAGE_NODE
from worklist.core.settings import Settings

SECRET = "a-session-secret-nobody-may-see-0123456789"


def _config(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess:
    env = environment_without_settings()
    env.update(TRIAGE_DATA_DIR=str(tmp_path / "data"), **settings)
    return subprocess.run(
        [TRIAGE_NODE, "config", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _table(stdout: str) -> dict[str, tuple[str, str]]:
    """variable -> (value, meaning line) from the text table."""
    lines = stdout.splitlines()
    found = {}
    for i, line in enumerate(lines):
        if line.startswith("TRIAGE_"):
            variable, _, value = line.partition(" ")
            found[variable] = (value.strip(), lines[i + 1].strip())
    return found


def test_config_shows_effective_values_and_masks_secrets(tmp_path: Path) -> None:
    result = _config(
        tmp_path,
        TRIAGE_DATABASE_URL="postgresql://triage:pg-password-123@db.example/triage",
        TRIAGE_BROKER_URL="redis://:redis-password-456@cache.example:6379/0",
        TRIAGE_SESSION_SECRET=SECRET,
        TRIAGE_DESTINATIONS="PACS@10.0.0.5:104",
    )
    assert result.returncode == 0, result.stderr
    for secret in (SECRET, "pg-password-123", "redis-password-456"):
        assert secret not in result.stdout + result.stderr
    table = _table(result.stdout)
    assert set(table) == {f"TRIAGE_{name.upper()}" for name in Settings.model_fields}
    for variable, (_value, meaning) in table.items():
        assert len(meaning) > 15 and meaning.endswith("]"), variable
    assert table["TRIAGE_DATABASE_URL"][0] == "postgresql://triage:***@db.example/triage"
    assert table["TRIAGE_DATABASE_URL"][1].endswith("[environment]")
    assert table["TRIAGE_BROKER_URL"][0] == "redis://:***@cache.example:6379/0"
    assert table["TRIAGE_SESSION_SECRET"][0] == "******** (set)"
    assert table["TRIAGE_DESTINATIONS"][0] == "PACS@10.0.0.5:104"
    assert table["TRIAGE_MODEL_PATH"][0].startswith(str(default_model_path().resolve()) + " (")
    assert table["TRIAGE_PROVIDERS"][0] == "CPUExecutionProvider (active)"
    assert table["TRIAGE_AE_TITLE"] == ("TRIAGE", "AE title of the node. [default]")


def test_config_names_the_sqlite_file_actually_used(tmp_path: Path) -> None:
    result = _config(tmp_path, "--json", TRIAGE_SESSION_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    rows = {row["variable"]: row for row in json.loads(result.stdout)}
    database = (tmp_path / "data" / "triage.db").resolve()
    assert rows["TRIAGE_DATABASE_URL"]["value"] == f"sqlite:///{database}"
    assert rows["TRIAGE_DATABASE_URL"]["source"] == "default"
    assert rows["TRIAGE_DATA_DIR"]["value"] == str((tmp_path / "data").resolve())
    assert rows["TRIAGE_DATA_DIR"]["source"] == "environment"
    assert rows["TRIAGE_SESSION_SECRET"]["value"] == "******** (set)"
    assert SECRET not in result.stdout
