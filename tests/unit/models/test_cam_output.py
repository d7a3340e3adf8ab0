"""The class-activation-map output: graph surgery on the shipped model and on fresh
exports (plain CNN, gated pair, site head), logits unchanged, maps whose mean is the
logit, and the heatmap drawn from a map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402

from models.cam_output import (  # noqa: E402
    CAM_OUTPUT,
    CamNotDerivable,
    add_cam_output,
    cam_heatmap,
    cam_shape,
    remove_output,
)
from models.card import read_card, weights_sha256  # noqa: E402
from models.runtime import Classifier, default_model_path  # noqa: E402

MODEL = default_model_path()


def _run(model: object, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(outputs, {"image": x})


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, size, size)).astype(np.float32)


@pytest.mark.skipif(not MODEL.exists(), reason="default model not built")
def test_shipped_model_has_a_cam_and_the_same_logits_as_without_it() -> None:
    proto = onnx.load(str(MODEL))
    card = read_card(MODEL)
    assert card.outputs[CAM_OUTPUT]["shape"] == ["N", 8, 8]
    assert cam_shape(proto) == (8, 8)
    assert card.sha256 == weights_sha256(proto)  # the surgery added no weight
    without = remove_output(proto, CAM_OUTPUT)
    assert len(without.graph.node) < len(proto.graph.node)
    x = _images(6, 128)
    logits, embedding, cam = _run(proto, x, ["logits", "embedding", CAM_OUTPUT])
    before, before_emb = _run(without, x, ["logits", "embedding"])
    np.testing.assert_allclose(logits, before, rtol=0, atol=1e-5)
    assert np.array_equal(embedding, before_emb)
    assert cam.shape == (6, 8, 8)
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logits, rtol=0, atol=1e-5)
    # the surgery is repeatable: a second pass gives the same map
    again = add_cam_output(proto)
    np.testing.assert_allclose(_run(again, x, [CAM_OUTPUT])[0], cam, rtol=0, atol=1e-6)


@pytest.mark.skipif(not MODEL.exists(), reason="default model not built")
def test_classifier_gives_logits_and_cam_in_one_run() -> None:
    clf = Classifier.load(MODEL, providers=["CPUExecutionProvider"])
    assert clf.has_cam
    x = _images(3, 128, seed=1)
    logits, cam = clf.predict_with_cam(x)
    np.testing.assert_array_equal(logits, clf.predict_logits(x))
    assert cam.shape == (3, 8, 8)
    empty_logits, empty_cam = clf.predict_with_cam(x[:0])
    assert empty_logits.shape == (0,) and empty_cam.shape[0] == 0


def test_tiny_model_without_pooled_features_has_none(tmp_path: Path) -> None:
    from tests.support.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "tiny.onnx", input_size=16)
    with pytest.raises(CamNotDerivable):
        add_cam_output(onnx.load(str(tmp_path / "tiny.onnx")))
    clf = Classifier.load(tmp_path / "tiny.onnx")
    assert not clf.has_cam
    with pytest.raises(ValueError, match="no 'cam' output"):
        clf.predict_with_cam(_images(1, 16))


def test_a_card_declaring_a_missing_cam_is_refused(tmp_path: Path) -> None:
    from models.card import embed_card
    from models.runtime import ModelLoadError
    from tests.support.tiny_model import build_tiny_model

    card = build_tiny_model(tmp_path / "tiny.onnx", input_size=16)
    embed_card(tmp_path / "tiny.onnx", card.model_copy(update={"outputs": {"cam": {}}}))
    with pytest.raises(ModelLoadError, match="lacks"):
        Classifier.load(tmp_path / "tiny.onnx")


def test_cam_heatmap_is_relative_to_the_map() -> None:
    cam = np.full((4, 4), -3.0, np.float32)
    cam[1, 2], cam[3, 0] = 5.0, 1.0
    heat = cam_heatmap(cam)
    assert heat.dtype == np.float32 and heat.shape == (4, 4)
    assert heat[1, 2] == 1.0 and heat[3, 0] == pytest.approx(0.5)
    assert (heat[cam == -3.0] == 0).all()
    assert not cam_heatmap(np.zeros((8, 8))).any()
    assert not cam_heatmap(np.full((2, 2), np.nan)).any()
    with pytest.raises(ValueError):
        cam_heatmap(np.zeros(4))


# -- fresh exports (torch) ------------------------------------------------------


@pytest.fixture(scope="module")
def torch_modules() -> Any:
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    return torch


def test_plain_cnn_export_cam_is_the_head_at_each_position(
    torch_modules: Any, tmp_path: Path
) -> None:
    torch = torch_modules
    from models.backbones import build_model
    from models.cam import class_activation_map
    from models.onnx_export import export_onnx, parity_check
    from models.preprocess import PreprocessSpec

    torch.manual_seed(0)
    spec = PreprocessSpec(input_size=32)
    model = build_model("plaincnn8", in_chans=1).eval()
    path = export_onnx(model, spec, tmp_path / "plain.onnx", cam=True)
    diffs = parity_check(model, path, spec, atol=1e-4, batch=3)
    assert diffs["max_abs_diff_cam_mean"] <= 1e-5
    x = _images(4, 32, seed=2)
    logits, cam = _run(onnx.load(str(path)), x, ["logits", CAM_OUTPUT])
    bias = float(model.head.bias.detach()[0])
    # mean of the map + the head's bias... is the logit: the map is w . F(y, x) + b
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logits, rtol=0, atol=1e-5)
    for i in range(len(x)):
        torch_cam = class_activation_map(model, x[i])
        np.testing.assert_allclose(cam[i] - bias, torch_cam, rtol=0, atol=1e-4)
        assert torch_cam.mean() + bias == pytest.approx(float(logits[i]), abs=1e-4)
    # without cam=True the graph is as before
    plain = export_onnx(model, spec, tmp_path / "no_cam.onnx")
    assert CAM_OUTPUT not in {o.name for o in onnx.load(str(plain)).graph.output}


def test_gated_pair_cam_is_the_gate_weighted_sum_of_the_experts(
    torch_modules: Any, tmp_path: Path
) -> None:
    torch = torch_modules
    from models.cam import class_activation_map
    from models.mixture import build_gated
    from models.onnx_export import export_onnx
    from models.preprocess import PreprocessSpec

    torch.manual_seed(1)
    spec = PreprocessSpec(input_size=32)
    pair = build_gated(in_chans=1).eval()
    with torch.no_grad():  # a gate that is neither 0 nor 1
        pair.gate.weight.normal_(0, 0.05)
    path = export_onnx(pair, spec, tmp_path / "gated.onnx", cam=True)
    x = _images(3, 32, seed=3)
    logits, cam = _run(onnx.load(str(path)), x, ["logits", CAM_OUTPUT])
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logits, rtol=0, atol=1e-5)
    with torch.no_grad():
        t = torch.from_numpy(x)
        _, ep = pair.pediatric(t)
        _, eg = pair.general(t)
        g = torch.sigmoid(pair.gate(torch.cat([ep, eg], dim=1))).squeeze(-1).numpy()
    assert g.min() > 0.05 and g.max() < 0.95
    for i in range(len(x)):
        expected = g[i] * (
            class_activation_map(pair.pediatric, x[i]) + float(pair.pediatric.head.bias.detach()[0])
        ) + (1 - g[i]) * (
            class_activation_map(pair.general, x[i]) + float(pair.general.head.bias.detach()[0])
        )
        np.testing.assert_allclose(cam[i], expected, rtol=0, atol=1e-4)


def test_site_head_gets_the_map_of_its_new_logit(torch_modules: Any, tmp_path: Path) -> None:
    torch = torch_modules
    from models.backbones import build_model
    from models.card import ModelCard, embed_card
    from models.finetune import add_head
    from models.onnx_export import export_onnx
    from models.preprocess import PreprocessSpec

    torch.manual_seed(2)
    spec = PreprocessSpec(input_size=32)
    parent = export_onnx(
        build_model("plaincnn8", in_chans=1).eval(), spec, tmp_path / "p.onnx", cam=True
    )
    embed_card(parent, ModelCard(name="p", version="1", preprocessing=spec.to_dict()))
    weight = np.random.default_rng(4).normal(size=257).astype(np.float32)
    shape = add_head(parent, tmp_path / "site.onnx", weight, 0.3)
    assert shape == (2, 2)  # 32 px: stem stride 2, three 2x2 pools
    x = _images(3, 32, seed=5)
    p_logits, emb = _run(onnx.load(str(parent)), x, ["logits", "embedding"])
    logits, cam = _run(onnx.load(str(tmp_path / "site.onnx")), x, ["logits", CAM_OUTPUT])
    np.testing.assert_allclose(logits, emb @ weight[:-1] + weight[-1] * p_logits + 0.3, atol=1e-4)
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logits, rtol=0, atol=1e-5)


def test_a_non_linear_layer_after_pooling_has_no_cam(torch_modules: Any, tmp_path: Path) -> None:
    torch = torch_modules
    from models.backbones import TriageNet
    from models.onnx_export import export_onnx
    from models.preprocess import PreprocessSpec

    class PooledThenMlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.mlp(self.conv(x).mean(dim=(2, 3)))

    model = TriageNet(PooledThenMlp(), 4, drop=0.0).eval()
    path = export_onnx(model, PreprocessSpec(input_size=16), tmp_path / "mlp.onnx", cam=True)
    proto = onnx.load(str(path))
    assert CAM_OUTPUT not in {o.name for o in proto.graph.output}
    with pytest.raises(CamNotDerivable, match="not a linear function"):
        add_cam_output(proto)
