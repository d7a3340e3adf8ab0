"""A tiny ONNX classifier with a model card, for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["build_tiny_model"]


def build_tiny_model(
    path: str | Path,
    *,
    input_size: int = 64,
    slow_matmuls: int = 0,
    name: str = "tiny-test-model",
    version: str = "0.0.1",
    weight: float = 4.0,
) -> object:
    """Write a small ONNX classifier that honours the models/ contract.

    Input ``image`` ``(N, 1, S, S)``; outputs ``logits`` ``(N,)`` = ``weight * mean(image)``
    and ``embedding`` ``(N, 2)`` (mean and max). With ``slow_matmuls`` > 0 the graph
    also multiplies the image by an identity matrix that many times (whose result
    is added times zero), to make inference slow on purpose (worker-kill tests).

    Parameters
    ----------
    path : str or Path
    input_size : int
    slow_matmuls : int
    name, version : str
        Written into the embedded model card.
    weight : float

    Returns
    -------
    models.card.ModelCard
        The card as embedded (with its sha256).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.card import ModelCard, embed_card
    from models.preprocess import PreprocessSpec

    s = int(input_size)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m4"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("ReduceMax", ["image"], ["x4"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Mul", ["m4", "w"], ["lin"]),
    ]
    inits = [numpy_helper.from_array(np.array(weight, np.float32), "w")]
    last = "lin"
    if slow_matmuls:
        inits += [
            numpy_helper.from_array((np.eye(s) * 0.999 + 1e-4).astype(np.float32), "eye"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
        prev = "image"
        for i in range(slow_matmuls):
            nodes.append(helper.make_node("MatMul", [prev, "eye"], [f"mm{i}"]))
            prev = f"mm{i}"
        nodes += [
            helper.make_node("ReduceMean", [prev], ["slow_m"], keepdims=0, axes=[1, 2, 3]),
            helper.make_node("Mul", ["slow_m", "zero"], ["slow_z"]),
            helper.make_node("Add", ["lin", "slow_z"], ["lin2"]),
        ]
        last = "lin2"
    nodes += [
        helper.make_node("Identity", [last], ["logits"]),
        helper.make_node("Unsqueeze", ["m4", "ax1"], ["m2"]),
        helper.make_node("Unsqueeze", ["x4", "ax1"], ["x2"]),
        helper.make_node("Concat", ["m2", "x2"], ["embedding"], axis=1),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, s, s])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    card = ModelCard(
        name=name,
        version=version,
        preprocessing=PreprocessSpec(input_size=s, channels=1).to_dict(),
        calibration={"method": "temperature", "temperature": 1.0},
        operating_points={
            "balanced": {"threshold": 0.5, "sensitivity": 0.8, "specificity": 0.8},
            "high_sensitivity": {"threshold": 0.3, "sensitivity": 0.95, "specificity": 0.5},
        },
    )
    return embed_card(path, card)
