"""The shipped default model: card, size, CPU inference, and accuracy on real test images.

Fixed sets: the first 60 ``normal`` and the first 60 ``abnormal`` rows of the
``test`` split of ``../shared/data/cxr/labels.csv`` (file order), bar ROC-AUC
>= 0.95 (the full test split measures about 0.99); and every row of the
``test`` split of ``../shared/data/cxr-nih512/labels.csv`` (124 adult NIH
images), bar :data:`ADULT_AUC_BAR` (see models/default/evaluation/report.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.metrics import roc_auc
from models.preprocess import preprocess_file
from models.runtime import Classifier, default_model_path

MODEL = default_model_path()
pytestmark = pytest.mark.skipif(not MODEL.exists(), reason=f"default model not built yet: {MODEL}")

AUC_BAR = 0.95
#: Adult bar: the issue asks for 0.8 on a fixed adult subset.
ADULT_AUC_BAR = 0.8


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.load(MODEL, providers=["CPUExecutionProvider"])


def test_card_is_complete(clf: Classifier) -> None:
    card = clf.card
    for field in (
        "name",
        "version",
        "sha256",
        "intended_use",
        "limitations",
        "input",
        "preprocessing",
        "labels",
        "calibration",
        "operating_points",
        "metrics",
        "subgroups",
        "training_data",
    ):
        assert getattr(card, field), field
    assert card.labels == ["normal", "abnormal"]
    assert card.calibration["method"] == "temperature" and card.calibration["fitted_on"] == "val"
    assert {"balanced", "high_sensitivity"} <= set(card.operating_points)
    assert card.operating_points["high_sensitivity"]["sensitivity"] >= 0.95
    assert card.manufacturer == "cxr-triage-node project"
    sidecar = MODEL.with_name(MODEL.stem + ".card.json")
    assert sidecar.exists()


def test_weights_hash_matches(clf: Classifier) -> None:
    onnx = pytest.importorskip("onnx")
    from models.card import weights_sha256

    assert clf.sha256 == weights_sha256(onnx.load(str(MODEL)))


def test_size_and_reports() -> None:
    assert MODEL.stat().st_size < 50 * 1024 * 1024
    ev = MODEL.parent / "evaluation"
    for name in ("report.md", "metrics.json", "roc.png", "precision_recall.png", "calibration.png"):
        assert (ev / name).exists(), name


def test_runs_on_cpu_with_dynamic_batch(clf: Classifier) -> None:
    assert "CPUExecutionProvider" in clf.active_providers
    spec = clf.card.preprocess_spec
    x = np.zeros((3, *spec.shape), np.float32)
    assert clf.predict_proba(x).shape == (3,)
    assert clf.embed(x[:1]).shape[0] == 1


def test_scores_fixed_real_test_images(clf: Classifier, cxr_dir: Path) -> None:
    with (cxr_dir / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    chosen = [r for r in rows if r["label"] == "normal"][:60] + [
        r for r in rows if r["label"] == "abnormal"
    ][:60]
    spec = clf.card.preprocess_spec
    x = np.stack([preprocess_file(cxr_dir / r["image"], spec) for r in chosen])
    y = np.array([r["label"] == "abnormal" for r in chosen], dtype=int)
    prob = clf.predict_proba(x)
    assert np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()
    assert roc_auc(y, prob) >= AUC_BAR


def test_scores_real_dicom(clf: Classifier, dicom_dir: Path) -> None:
    spec = clf.card.preprocess_spec
    names = [
        "RG1_J2KI.dcm",
        "konica_CR_chest_Monochrome1-Jpeg.dcm",
        "canon_DX_chest_966_fixed.dcm",
        "fuji_CR_chest_from_fodicom_withmeta.dcm",
    ]
    x = np.stack([preprocess_file(dicom_dir / "real" / n, spec) for n in names])
    prob = clf.predict_proba(x)
    assert prob.shape == (4,) and np.isfinite(prob).all()


def test_scores_fixed_adult_test_images(clf: Classifier, data_dir: Path) -> None:
    nih = data_dir / "cxr-nih512"
    if not (nih / "labels.csv").exists():
        pytest.skip(f"adult data not found at {nih}")
    with (nih / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    spec = clf.card.preprocess_spec
    x = np.stack([preprocess_file(nih / r["image"], spec) for r in rows])
    y = np.array([r["label"] == "abnormal" for r in rows], dtype=int)
    prob = clf.predict_proba(x)
    assert len(rows) == 124 and np.isfinite(prob).all()
    assert roc_auc(y, prob) >= ADULT_AUC_BAR


def test_card_lists_its_sources(clf: Classifier) -> None:
    sources = clf.card.training_data.get("sources")
    if not sources:
        pytest.skip("the shipped card predates multi-source training")
    for src in sources:
        assert src["n"] > 0 and {"train", "val", "test"} <= set(src["splits"]), src["name"]
    assert {"cxr", "cxr-nih512"} <= {s["name"] for s in sources}
