"""Model card: write, embed in ONNX, read back; calibration and thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.card import (
    ModelCard,
    embed_card,
    read_card,
    sidecar_path,
    weights_sha256,
    write_card_json,
)
from models.preprocess import PreprocessSpec

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _tiny_onnx(path: Path, weight: float = 2.0) -> Path:
    """image (N,1,8,8) -> logits (N,) = weight * mean(image), embedding (N,1)."""
    w = numpy_helper.from_array(np.array([weight], np.float32), "w")
    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    axes1 = numpy_helper.from_array(np.array([1], np.int64), "axes1")
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "w"], ["logits"]),
        helper.make_node("Unsqueeze", ["m", "axes1"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1]),
        ],
        initializer=[w, axes, axes1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _card() -> ModelCard:
    return ModelCard(
        name="tiny",
        version="1.2.3",
        intended_use="tests only",
        limitations=["not a model"],
        input={"name": "image", "shape": ["N", 1, 8, 8]},
        preprocessing=PreprocessSpec(input_size=8).to_dict(),
        calibration={"method": "temperature", "temperature": 2.0},
        operating_points={
            "balanced": {"threshold": 0.6, "sensitivity": 0.9, "specificity": 0.8},
            "high_sensitivity": {"threshold": 0.3, "sensitivity": 0.96, "specificity": 0.5},
        },
        metrics={"test": {"roc_auc": {"value": 0.9}}},
        subgroups={"sex": {}},
        training_data={"n": 1},
    )


def test_json_roundtrip(tmp_path: Path) -> None:
    card = _card()
    path = write_card_json(tmp_path / "c.json", card)
    back = ModelCard.from_json(path.read_text())
    assert back == card
    assert back.manufacturer == "cxr-triage-node project"
    assert back.preprocess_spec == PreprocessSpec(input_size=8)


def test_embed_and_read_back(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    written = embed_card(model, _card())
    assert len(written.sha256) == 64 and written.sha256 == weights_sha256(model)
    back = read_card(model)
    assert back == written
    assert json.loads(sidecar_path(model).read_text())["sha256"] == written.sha256
    # the embedded copy wins over the sidecar
    write_card_json(sidecar_path(model), written.model_copy(update={"version": "sidecar"}))
    assert read_card(model).version == "1.2.3"


def test_hash_ignores_card_but_follows_weights(tmp_path: Path) -> None:
    a = _tiny_onnx(tmp_path / "a.onnx")
    first = embed_card(a, _card()).sha256
    second = embed_card(a, _card().model_copy(update={"version": "2"})).sha256
    assert first == second
    b = _tiny_onnx(tmp_path / "b.onnx", weight=3.0)
    assert weights_sha256(b) != first


def test_sidecar_fallback_and_missing(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "plain.onnx")
    with pytest.raises(FileNotFoundError):
        read_card(model)
    write_card_json(sidecar_path(model), _card())
    assert read_card(model).name == "tiny"


def test_calibrate_and_threshold() -> None:
    card = _card()
    np.testing.assert_allclose(
        card.calibrate(np.array([0.0, 2.0, -2.0])), 1 / (1 + np.exp(-np.array([0.0, 1.0, -1.0])))
    )
    assert card.threshold("balanced") == 0.6
    assert card.threshold("high_sensitivity") == 0.3
    with pytest.raises(KeyError, match="no operating point"):
        card.threshold("nope")


def test_invalid_cards_are_refused() -> None:
    with pytest.raises(ValueError):
        ModelCard(name="x", version="1", calibration={"method": "temperature", "temperature": 0})
    with pytest.raises(ValueError):
        ModelCard(name="x", version="1", operating_points={"balanced": {"threshold": 1.5}})
    with pytest.raises(ValueError):
        ModelCard(name="x", version="1", preprocessing={"window": "nonsense"})
