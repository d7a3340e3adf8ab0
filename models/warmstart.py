"""Start a training run from the weights of an exported ONNX model (imports torch).

The exporter folds every BatchNorm into the convolution before it (``Conv`` with
a bias), so the ONNX graph holds ``W'`` and ``b'`` per convolution. They go back
into a model of the same backbone as: conv weight ``W'``; BatchNorm with running
mean ``mu`` and variance ``var`` (the statistics of ``W'x`` on sample images),
``gamma = sqrt(var + eps)`` and ``beta = mu + b'``. In eval mode the model then
computes exactly what the ONNX graph does, and in training mode, where the batch
statistics are close to ``mu``/``var``, nearly so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["init_from_onnx"]

logger = logging.getLogger(__name__)


def _onnx_convs(
    path: str | Path,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = []
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            b = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            convs.append((w, b))
    return convs, inits


@torch.no_grad()
def init_from_onnx(model: nn.Module, onnx_path: str | Path, sample: torch.Tensor) -> None:
    """Load an ONNX model's (BatchNorm-folded) weights into ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        A freshly built model of the same backbone: every ``Conv2d`` followed by
        a ``BatchNorm2d``, in the ONNX graph's order, and a ``head`` Linear.
    onnx_path : str or pathlib.Path
        The exported model.
    sample : torch.Tensor
        Preprocessed images ``(N, C, H, W)`` for the BatchNorm statistics.

    Raises
    ------
    ValueError
        When the layers do not match.
    """
    convs, inits = _onnx_convs(onnx_path)
    mods = list(model.modules())
    pairs = [
        (m, mods[i + 1])
        for i, m in enumerate(mods)
        if isinstance(m, nn.Conv2d)
        and i + 1 < len(mods)
        and isinstance(mods[i + 1], nn.BatchNorm2d)
    ]
    if len(pairs) != len(convs) or len(pairs) != sum(isinstance(m, nn.Conv2d) for m in mods):
        raise ValueError(
            f"{onnx_path}: {len(convs)} convolutions, the model has {len(pairs)} conv+BN pairs"
        )
    for (conv, bn), (w, b) in zip(pairs, convs, strict=True):
        if tuple(conv.weight.shape) != w.shape:
            raise ValueError(f"conv weight shape {tuple(conv.weight.shape)} != ONNX {w.shape}")
        conv.weight.copy_(torch.from_numpy(np.array(w)))
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.from_numpy(np.array(b)))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    head = model.head
    head.weight.copy_(torch.from_numpy(np.array(inits["head.weight"])))
    head.bias.copy_(torch.from_numpy(np.array(inits["head.bias"])))
    # statistics of W'x (conv output, before BN) on the sample
    stats: dict[nn.Conv2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        stats[mod] = (out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3), unbiased=False))

    handles = [conv.register_forward_hook(hook) for conv, _ in pairs]
    model.eval()
    model(sample)
    for h in handles:
        h.remove()
    for (conv, bn), (_w, b) in zip(pairs, convs, strict=True):
        mu, var = stats[conv]
        bn.running_mean.copy_(mu)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mu + torch.from_numpy(b))
    logger.info("weights of %s loaded (%d conv+BN pairs)", Path(onnx_path).name, len(pairs))
