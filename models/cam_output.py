"""A class-activation-map output in the ONNX graph, and the heatmap drawn from it.

When a classifier's abnormal logit is a *linear* function of the global average of
its last feature map ``F`` (N, C, h, w) -- global average pooling, then linear layers,
sums, and products with per-image factors -- the same function applied at each
position ``(y, x)`` of ``F`` gives a map whose mean over the positions *is* the logit
(a class-activation map, Zhou et al., CVPR 2016). For the plain CNN that is
``w . F(y, x) + b`` with the head's weights ``w`` and bias ``b``; for the shipped gated
pair (:mod:`models.mixture`, ``logit = g * pediatric + (1 - g) * general``) it is
``g * (w_p . F_p(y, x) + b_p) + (1 - g) * (w_g . F_g(y, x) + b_g)``, exact because the
pair mixes the experts' *logits*; the gate ``g`` depends on the whole image, so it
weighs the two experts' maps, it is not itself spread over positions. A site head
(:func:`models.finetune.add_head`: ``[embedding, parent logit] @ w + b``) is linear too.

:func:`add_cam_output` derives that map from the graph itself ("lifting" every tensor
on the linear path from the pooled features to ``logits`` to a per-position tensor)
and adds it as the output ``cam`` (N, h, w); the existing outputs are computed by the
same nodes as before. A graph without such a path (a non-linear layer between the
pooling and the logit, e.g. MobileNetV3's ``conv_head``) raises
:class:`CamNotDerivable`: the node then falls back to an occlusion map
(:mod:`models.occlusion`). No initializer is added (reshapes use ``Constant`` nodes), so
the weights hash of the model card (:func:`models.card.weights_sha256`) is unchanged.

:func:`cam_heatmap` turns one ``cam`` into the [0, 1] map the node stores and draws.
Needs the ``onnx`` package for the surgery only (imported there); numpy otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CAM_MEANING",
    "CAM_OUTPUT",
    "CamNotDerivable",
    "add_cam_output",
    "cam_card_entry",
    "cam_heatmap",
    "cam_shape",
    "remove_output",
    "write_with_cam",
]

logger = logging.getLogger(__name__)

#: Name of the graph output and of its entry in the card's ``outputs``.
CAM_OUTPUT = "cam"
#: The card's description of the output.
CAM_MEANING = (
    "class-activation map: the abnormal logit's head applied at each position of the last "
    "feature map (per-position abnormal logit); its mean over positions is the logit"
)
_PREFIX = "cam_lift/"


class CamNotDerivable(ValueError):
    """The graph's logit is not a linear function of a globally pooled feature map."""


def cam_card_entry(shape: tuple[int, int]) -> dict[str, Any]:
    """The model card's ``outputs.cam`` entry for a map of ``shape`` (h, w)."""
    return {"shape": ["N", int(shape[0]), int(shape[1])], "meaning": CAM_MEANING}


def cam_heatmap(cam: np.ndarray) -> np.ndarray:
    """The stored heatmap of one class-activation map: [0, 1], 1 where the model saw
    the most abnormal evidence, 0 at and below the map's median position.

    A CAM's absolute level moves with the image's logit (a strongly abnormal image is
    positive everywhere; at a low operating point an abnormal image can be negative
    everywhere), so the map is drawn relative to itself: the positions above the median
    scaled by the largest, the lower half transparent.

    Parameters
    ----------
    cam : numpy.ndarray
        ``(h, w)`` per-position logits (one image of the ``cam`` output).

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` float32 in [0, 1]; all zeros for a flat (or non-finite) map.
    """
    grid = np.asarray(cam, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"a CAM is 2-D, got shape {grid.shape}")
    if not np.isfinite(grid).all():
        return np.zeros(grid.shape, np.float32)
    above = np.clip(grid - float(np.median(grid)), 0.0, None)
    top = float(above.max())
    return (above / top).astype(np.float32) if top > 0 else np.zeros(grid.shape, np.float32)


# -- graph surgery ----------------------------------------------------------------


def remove_output(model: Any, name: str) -> Any:
    """A copy of an ONNX model without output ``name`` and the nodes only it needed."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    graph = proto.graph
    keep = [o for o in graph.output if o.name != name]
    del graph.output[:]
    graph.output.extend(keep)
    _prune(graph)
    return proto


def _prune(graph: Any) -> None:
    """Drop the nodes no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)


class _Lifter:
    """Builds, for a tensor ``t`` on the linear path to the logit, a tensor of shape
    ``t.shape + (h, w)`` whose mean over the last two axes is ``t``."""

    def __init__(self, graph: Any, shapes: dict[str, list[int | str | None]]) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.shapes = shapes
        self.producer = {out: node for node in graph.node for out in node.output}
        self.constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
        self.memo: dict[str, str | None] = {}
        self.new_nodes: list[Any] = []
        self.count = 0

    # -- helpers --------------------------------------------------------------
    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{_PREFIX}{hint}_{self.count}"

    def _node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self._name(op)
        self.new_nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _const(self, values: list[int] | np.ndarray) -> str:
        from onnx import helper, numpy_helper

        out = self._name("const")
        arr = np.asarray(values, dtype=np.int64 if isinstance(values, list) else None)
        self.new_nodes.append(
            helper.make_node(
                "Constant", [], [out], name=out, value=numpy_helper.from_array(arr, out)
            )
        )
        return out

    def _rank(self, name: str) -> int:
        if name in self.constants:
            return int(self.constants[name].ndim)
        shape = self.shapes.get(name)
        if shape is None:
            raise CamNotDerivable(f"rank of {name!r} unknown (shape inference gave none)")
        return len(shape)

    def _axes(self, node: Any) -> list[int] | None:
        for attr in node.attribute:
            if attr.name == "axes":
                return list(attr.ints)
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in self.constants:
                raise CamNotDerivable(f"{node.op_type} {node.name!r}: axes are not constant")
            return [int(a) for a in self.constants[node.input[1]].ravel()]
        return None

    def _attr(self, node: Any, name: str, default: Any) -> Any:
        from onnx import helper

        for attr in node.attribute:
            if attr.name == name:
                return helper.get_attribute_value(attr)
        return default

    def _trailing(self, name: str) -> str:
        """``name`` with two unit axes appended (broadcasts against a lifted tensor)."""
        r = self._rank(name)
        return self._node("Unsqueeze", [name, self._const([r, r + 1])])

    # -- lifting --------------------------------------------------------------
    def lift(self, name: str) -> str | None:
        """The per-position tensor of ``name``, or None when ``name`` does not depend
        linearly on a pooled feature map (a per-image factor or a constant)."""
        if name not in self.memo:
            node = self.producer.get(name)
            self.memo[name] = None if node is None else self._lift_node(node)
        return self.memo[name]

    def _lift_node(self, node: Any) -> str | None:
        op = node.op_type
        if op == "ReduceMean":
            axes = self._axes(node)
            rank = self._rank(node.input[0])
            keep = self._attr(node, "keepdims", 1)
            if rank == 4 and keep == 0 and axes is not None and {a % 4 for a in axes} == {2, 3}:
                return str(node.input[0])  # the feature map itself
            return None
        if op == "Flatten":
            (src,) = node.input
            if (src_node := self.producer.get(src)) is not None and (
                src_node.op_type == "GlobalAveragePool"
                and self._attr(node, "axis", 1) == 1
                and self._rank(src_node.input[0]) == 4
            ):
                return str(src_node.input[0])
            lifted = self.lift(src)
            if lifted is None:
                return None
            if self._attr(node, "axis", 1) == 1 and self._rank(src) == 2:
                return lifted
            raise CamNotDerivable(f"Flatten {node.name!r} on the logit's path changes its shape")
        if op in ("Identity", "Dropout"):
            return self.lift(node.input[0])
        if op in ("Squeeze", "Unsqueeze"):
            lifted = self.lift(node.input[0])
            if lifted is None:
                return None
            axes = self._axes(node)
            if axes is None:
                raise CamNotDerivable(f"{op} {node.name!r} without axes on the logit's path")
            rank = self._rank(node.input[0]) + (len(axes) if op == "Unsqueeze" else 0)
            norm = sorted(a % rank for a in axes)
            return self._node(op, [lifted, self._const(norm)])
        if op == "Reshape":
            return self._lift_reshape(node)
        if op in ("Gemm", "MatMul"):
            return self._lift_linear(node)
        if op == "Concat":
            lifted = [self.lift(i) for i in node.input]
            if all(x is None for x in lifted):
                return None
            if any(x is None for x in lifted):
                raise CamNotDerivable(f"Concat {node.name!r} mixes pooled and other features")
            axis = int(self._attr(node, "axis", 0)) % self._rank(node.output[0])
            return self._node("Concat", [str(x) for x in lifted], axis=axis)
        if op in ("Add", "Sub", "Mul", "Div"):
            return self._lift_arithmetic(node)
        if op == "Neg":
            lifted = self.lift(node.input[0])
            return None if lifted is None else self._node("Neg", [lifted])
        return None  # not linear: a per-image factor to what lies after it

    def _lift_reshape(self, node: Any) -> str | None:
        lifted = self.lift(node.input[0])
        if lifted is None:
            return None
        before = self.shapes.get(node.input[0])
        after = self.shapes.get(node.output[0])
        if before is None or after is None:
            raise CamNotDerivable(f"Reshape {node.name!r}: shapes unknown")
        if len(before) == 2 and len(after) == 1 and before[1] == 1:
            return self._node("Squeeze", [lifted, self._const([1])])
        if len(before) == 1 and len(after) == 2 and after[1] == 1:
            return self._node("Unsqueeze", [lifted, self._const([1])])
        if before == after and all(isinstance(d, int) for d in before[1:]):
            return lifted
        raise CamNotDerivable(f"Reshape {node.name!r} on the logit's path: {before} -> {after}")

    def _lift_linear(self, node: Any) -> str | None:
        a, b = node.input[0], node.input[1]
        lifted = self.lift(a)
        if lifted is None:
            if self.lift(b) is not None:
                raise CamNotDerivable(f"{node.op_type} {node.name!r}: pooled features on the right")
            return None
        if self._rank(a) != 2 or b not in self.constants or self.constants[b].ndim != 2:
            raise CamNotDerivable(f"{node.op_type} {node.name!r}: not a linear layer")
        if node.op_type == "Gemm" and self._attr(node, "transA", 0):
            raise CamNotDerivable(f"Gemm {node.name!r} with transA on the logit's path")
        weight = b
        if node.op_type == "MatMul" or not self._attr(node, "transB", 0):
            weight = self._node("Transpose", [b], perm=[1, 0])  # (K, M) -> (M, K)
        kernel = self._node("Unsqueeze", [weight, self._const([2, 3])])  # (M, K, 1, 1)
        out = self._node("Conv", [lifted, kernel], kernel_shape=[1, 1])
        if node.op_type == "Gemm":
            alpha = float(self._attr(node, "alpha", 1.0))
            beta = float(self._attr(node, "beta", 1.0))
            if alpha != 1.0:
                out = self._node("Mul", [out, self._const(np.array(alpha, np.float32))])
            if len(node.input) > 2 and node.input[2]:
                bias = self._trailing(node.input[2])
                if beta != 1.0:
                    bias = self._node("Mul", [bias, self._const(np.array(beta, np.float32))])
                out = self._node("Add", [out, bias])
        return out

    def _lift_arithmetic(self, node: Any) -> str | None:
        op = node.op_type
        left, right = node.input[0], node.input[1]
        ll, lr = self.lift(left), self.lift(right)
        if ll is None and lr is None:
            return None
        if ll is not None and lr is not None:
            if op in ("Add", "Sub"):
                return self._node(op, [ll, lr])
            raise CamNotDerivable(f"{op} {node.name!r} multiplies two pooled-feature terms")
        if op == "Div" and ll is None:
            raise CamNotDerivable(f"Div {node.name!r} divides by a pooled-feature term")
        # One side is per image (or constant): the same at every position.
        if ll is not None:
            return self._node(op, [ll, self._trailing(right)])
        return self._node(op, [self._trailing(left), str(lr)])


def _shapes(proto: Any) -> dict[str, list[int | str | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes: dict[str, list[int | str | None]] = {}
    graph = inferred.graph
    for vi in [*graph.value_info, *graph.input, *graph.output]:
        tensor = vi.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        shapes[vi.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
    return shapes


def add_cam_output(model: Any, *, logits: str = "logits", name: str = CAM_OUTPUT) -> Any:
    """A copy of an ONNX classifier with a class-activation-map output.

    An existing output ``name`` (and the nodes only it needed) is replaced, so a graph
    whose logit changed (a new head) gets the map of its new logit.

    Parameters
    ----------
    model : onnx.ModelProto
        Output ``logits`` ``(N,)`` (or ``(N, 1)``), a linear function of a globally
        averaged feature map.
    logits : str
        The logit output.
    name : str
        The new output, ``(N, h, w)`` float32 whose mean over ``(h, w)`` is the logit.

    Returns
    -------
    onnx.ModelProto
        Checked with the ONNX checker. Initializers and the other outputs' nodes are
        untouched.

    Raises
    ------
    CamNotDerivable
        When the logit is not such a function.
    """
    import onnx
    from onnx import helper

    proto = remove_output(model, name)
    graph = proto.graph
    if logits not in {o.name for o in graph.output}:
        raise CamNotDerivable(f"the graph has no {logits!r} output")
    lifter = _Lifter(graph, _shapes(proto))
    lifted = lifter.lift(logits)
    if lifted is None:
        raise CamNotDerivable(
            f"{logits!r} is not a linear function of a globally averaged feature map"
        )
    rank = lifter._rank(logits)
    if rank == 2:
        lifted = lifter._node("Squeeze", [lifted, lifter._const([1])])
    elif rank != 1:
        raise CamNotDerivable(f"{logits!r} has rank {rank}; expected (N,) or (N, 1)")
    lifter.new_nodes.append(helper.make_node("Identity", [lifted], [name], name=f"{_PREFIX}out"))
    graph.node.extend(lifter.new_nodes)
    graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    _prune(graph)
    shapes = _shapes(proto)
    shape, batch = shapes.get(name), shapes.get(logits, ["N"])[0]
    if shape is None or len(shape) != 3:
        raise CamNotDerivable(f"the derived map has shape {shape}, expected (N, h, w)")
    del graph.output[-1]
    graph.output.append(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [batch, *shape[1:]])
    )
    onnx.checker.check_model(proto)
    return proto


def cam_shape(model: Any, *, name: str = CAM_OUTPUT) -> tuple[int, int] | None:
    """``(h, w)`` of a model's CAM output, or None when it has none (or it is dynamic)."""
    for output in model.graph.output:
        if output.name == name:
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 3 and all(d.HasField("dim_value") for d in dims[1:]):
                return int(dims[1].dim_value), int(dims[2].dim_value)
    return None


def write_with_cam(source: str | Path, out: str | Path) -> Path:
    """Write a copy of an ONNX model with a CAM output and its card entry.

    The card (embedded and the sidecar JSON) keeps every field; ``outputs.cam`` is added
    and ``sha256`` (the weights hash) is recomputed, which the surgery does not change.

    Parameters
    ----------
    source : str or Path
        An ONNX classifier with its model card.
    out : str or Path
        The new file (may be ``source``: replaced atomically).

    Returns
    -------
    Path

    Raises
    ------
    CamNotDerivable
        When the graph's logit has no class-activation map.
    """
    import onnx

    from models.card import embed_card, read_card

    source, out = Path(source), Path(out)
    card = read_card(source)
    proto = add_cam_output(onnx.load(str(source)))
    shape = cam_shape(proto)
    if shape is None:
        raise CamNotDerivable("the derived map has no fixed size (dynamic input size?)")
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    outputs = {**card.outputs, CAM_OUTPUT: cam_card_entry(shape)}
    embed_card(out, card.model_copy(update={"outputs": outputs}))
    return out
