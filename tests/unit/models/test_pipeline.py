"""Train (tiny) -> resume -> export with parity -> calibrate on val -> evaluate.

Uses a few dozen real images at 32 px so it runs in well under a minute on CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")

from models.backbones import BACKBONES, build_model  # noqa: E402
from models.cli import main  # noqa: E402
from models.onnx_export import ParityError, export_onnx, parity_check  # noqa: E402
from models.preprocess import PreprocessSpec  # noqa: E402
from models.runtime import Classifier  # noqa: E402


@pytest.fixture(scope="module")
def tiny_labels(cxr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24/12/16 images per split (balanced), with and without demographics."""
    with (cxr_dir / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keep = []
    for split, n in (("train", 24), ("val", 12), ("test", 16)):
        for label in ("normal", "abnormal"):
            keep += [r for r in rows if r["split"] == split and r["label"] == label][: n // 2]
    for i, r in enumerate(keep):  # fake demographics on half the rows, missing on the rest
        if i % 2:
            r["sex"], r["age"] = ("F", "34") if i % 4 == 1 else ("M", "81")
    out = tmp_path_factory.mktemp("labels") / "labels.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return out


def test_export_parity_small_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = PreprocessSpec(input_size=32)
    model = build_model("resnet10t", in_chans=1).eval()
    path = export_onnx(model, spec, tmp_path / "m.onnx")
    diffs = parity_check(model, path, spec, atol=1e-4, batch=3)
    assert diffs["max_abs_diff_logits"] <= 1e-4 and diffs["max_abs_diff_embedding"] <= 1e-4
    with pytest.raises(ParityError):
        parity_check(model, path, spec, atol=-1.0)


def test_backbone_registry() -> None:
    assert {"resnet10t", "mobilenetv3_small"} <= set(BACKBONES)
    with pytest.raises(KeyError):
        build_model("not-a-backbone")


def test_train_resume_export_calibrate_evaluate(
    tiny_labels: Path, cxr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    common = [
        "--labels",
        str(tiny_labels),
        "--images-root",
        str(cxr_dir),
        "--out",
        str(run),
        "--backbone",
        "resnet10t",
        "--input-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--threads",
        "1",
    ]
    assert main(["train", *common, "--epochs", "1"]) == 0
    assert (run / "last.pt").exists() and (run / "best.pt").exists()
    assert main(["train", *common, "--epochs", "2", "--resume"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run / "best.pt"), "--out", str(onnx_path), "--name", "tiny"]) == 0
    assert "parity max abs difference" in capsys.readouterr().out

    with pytest.raises(ValueError, match="never fitted on the test split"):
        from models.evaluate import calibrate_model

        calibrate_model(onnx_path, labels=tiny_labels, images_root=cxr_dir, split="test")
    assert (
        main(
            [
                "calibrate",
                str(onnx_path),
                "--labels",
                str(tiny_labels),
                "--images-root",
                str(cxr_dir),
            ]
        )
        == 0
    )
    clf = Classifier.load(onnx_path)
    assert {"balanced", "high_sensitivity"} <= set(clf.card.operating_points)
    assert clf.card.operating_points["high_sensitivity"]["sensitivity"] >= 0.95
    assert clf.card.calibration["fitted_on"] == "val"

    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(onnx_path),
                "--labels",
                str(tiny_labels),
                "--images-root",
                str(cxr_dir),
                "--split",
                "test",
                "--out",
                str(out),
                "--variants",
                "original,jpeg30_96px",
                "--n-boot",
                "50",
                "--update-card",
            ]
        )
        == 0
    )
    for name in (
        "metrics.json",
        "predictions.csv",
        "report.md",
        "roc.png",
        "precision_recall.png",
        "calibration.png",
        "predictions_jpeg30_96px.csv",
    ):
        assert (out / name).exists(), name
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "label", "probability"] and len(rows) == 16
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["variants"]["original"]["overall"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "brier"):
        assert overall[key]["ci_low"] <= overall[key]["value"] <= overall[key]["ci_high"], key
    groups = metrics["variants"]["original"]["subgroups"]["sex"]["groups"]
    assert set(groups) == {"F", "M", "missing"}
    assert set(metrics["variants"]["original"]["subgroups"]["age_band"]["groups"]) == {
        "18-39",
        "80+",
        "unknown",
    }
    card = Classifier.load(onnx_path).card
    assert card.metrics and card.subgroups
    probs = np.array([float(r["probability"]) for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()
