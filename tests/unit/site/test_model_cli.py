"""``triage-node model ...``: add, list, promote, rollback from the command line,
with clear errors that change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.cli import main


@pytest.fixture
def node_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node data directory whose configured model is a tiny test model."""
    import os

    from tests.support.tiny_model import build_tiny_model

    for key in list(os.environ):
        if key.startswith("TRIAGE_") and not key.startswith("TRIAGE_TEST_"):
            monkeypatch.delenv(key)
    shipped = tmp_path / "configured.onnx"
    build_tiny_model(shipped, name="configured")
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRIAGE_MODEL_PATH", str(shipped))
    return tmp_path


def test_model_commands(node_env: Path, make_model, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_model("site-model", weight=-2.0)
    assert main(["model", "add", str(site), "--shadow"]) == 0
    assert "registered site-model" in capsys.readouterr().out
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("champion\tconfigured") and out[2].startswith("shadow\tsite-model")

    assert main(["model", "promote", "unknown-model"]) == 1
    assert "no model named 'unknown-model'" in capsys.readouterr().err

    bad = make_model("no-points", operating_points={})
    assert main(["model", "add", str(bad)]) == 1
    assert "no operating points" in capsys.readouterr().err
    assert main(["model", "list", "--json"]) == 0
    assert "no-points" not in capsys.readouterr().out

    assert main(["model", "promote", "site-model", "--force", "--reason", "test"]) == 0
    capsys.readouterr()
    assert main(["model", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("champion\tsite-model")
    assert main(["model", "rollback"]) == 0
    capsys.readouterr()
    assert main(["model", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("champion\tconfigured")


def test_dataset_export_command_refuses_clearly(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = node_env / "export"
    assert main(["dataset", "export", "--out", str(out)]) == 1
    assert "TRIAGE_PSEUDONYM_KEY" in capsys.readouterr().err
    monkeypatch.setenv("TRIAGE_PSEUDONYM_KEY", "a-key-of-enough-length")
    assert main(["dataset", "export", "--out", str(out), "--since", "2020-01-01"]) == 1
    assert "no labelled study" in capsys.readouterr().err
    assert not out.exists()
