"""A cpu install without the ``train`` extra: one clear line, never a traceback.

Each test runs ``triage-model`` in a fresh interpreter in which a meta-path finder
makes ``import torch`` (or ``matplotlib``) fail exactly as on a machine without it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from models.runtime import default_model_path
from tests.conftest import REPO_ROOT

BLOCKER = """
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
from models.cli import main
sys.exit(main({argv!r}))
"""


def _triage_model(argv: list[str], blocked: set[str]) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=sorted(blocked), argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mii_help_without_torch_names_the_train_extra() -> None:
    result = _triage_model(["mii", "--help"], {"torch"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "triage-model mii needs the 'train' extra (torch is not installed):"
        " pip install -e '.[train]'"
    ]


def test_train_without_torch_names_the_train_extra(tmp_path: Path) -> None:
    result = _triage_model(
        ["train", "--labels", "x.csv", "--images-root", ".", "--out", str(tmp_path)], {"torch"}
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "triage-model train needs the 'train' extra (torch is not installed):"
        " pip install -e '.[train]'"
    ]


def test_evaluate_without_matplotlib_writes_the_numbers_then_names_the_extra(
    tmp_path: Path, shared_data: Path
) -> None:
    root = shared_data / "cxr"
    with (root / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    picked = [r for r in rows if r["label"] == "normal"][:4] + [
        r for r in rows if r["label"] == "abnormal"
    ][:4]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(picked[0]))
        writer.writeheader()
        writer.writerows(picked)
    model = tmp_path / "model.onnx"
    model.write_bytes(default_model_path().read_bytes())
    out = tmp_path / "eval"
    result = _triage_model(
        [
            "evaluate",
            str(model),
            "--labels",
            str(labels),
            "--images-root",
            str(root),
            "--out",
            str(out),
            "--n-boot",
            "20",
        ],
        {"matplotlib"},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("triage-model evaluate: metrics.json, predictions.csv and report.md")
    assert "needs the 'train' extra (matplotlib is not installed)" in last
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["plots"] == []
    with (out / "predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    assert not (out / "roc.png").exists()
