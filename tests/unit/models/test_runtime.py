"""Runtime: onnxruntime classifier with its card, batching and providers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
from models.card import embed_card
from models.runtime import Classifier, ModelLoadError, choose_providers, default_model_path

from .test_card import _card, _tiny_onnx


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    embed_card(path, _card())
    return path


def test_predict_and_split_batches(tiny: Path) -> None:
    clf = Classifier.load(tiny, max_batch=3)
    x = np.random.default_rng(0).normal(size=(10, 1, 8, 8)).astype(np.float32)
    logits = clf.predict_logits(x)
    np.testing.assert_allclose(logits, 2.0 * x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(x), clf.card.calibrate(logits))
    assert clf.embed(x).shape == (10, 1)
    assert clf.predict_logits(x[0]).shape == (1,)
    assert clf.predict_logits(x[:0]).shape == (0,)
    assert clf.sha256 == clf.card.sha256 and len(clf.file_sha256) == 64
    assert clf.active_providers[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="shape"):
        clf.predict_logits(np.zeros((2, 3, 8, 8), np.float32))


def test_choose_providers(caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime as ort

    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    default = choose_providers(None)
    assert default[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with caplog.at_level(logging.WARNING):
            assert choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"]) == [
                "CPUExecutionProvider"
            ]
        assert "not available" in caplog.text


def test_missing_model_and_card(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        Classifier.load(tmp_path / "nope.onnx")
    plain = _tiny_onnx(tmp_path / "plain.onnx")
    with pytest.raises(ModelLoadError, match="no model card"):
        Classifier.load(plain)


def test_default_model_path_points_inside_package() -> None:
    p = default_model_path()
    assert p.parent.name == "default" and p.parent.parent.name == "models" and p.suffix == ".onnx"


def test_runtime_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, models.runtime, models.preprocess, models.card, models.metrics, "
        "models.evaluate, models.degrade; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
