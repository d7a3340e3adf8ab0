"""ONNX export of a MedImageInsight classifier (float32 or float16) and its model card."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.card import INTENDED_USE, ModelCard
from models.mii.checkpoint import LoadReport
from models.mii.network import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MII_BACKBONE,
    MII_GFLOPS_PER_IMAGE,
    MII_VARIANTS,
    MiiTriageNet,
)
from models.onnx_export import ParityError, card_input, export_onnx, parity_check
from models.preprocess import PreprocessSpec

__all__ = ["Fp16Graph", "export_mii_onnx", "fp16_parity_check", "mii_card"]

logger = logging.getLogger(__name__)


class Fp16Graph(nn.Module):
    """Encoder in float16, head in float32; float32 input and outputs (the node's contract).

    The head stays float32 because probe heads (tree thresholds, probability
    clipping at 1 - 1e-4) lose their meaning in float16.
    """

    def __init__(self, model: MiiTriageNet) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.model.backbone.half()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.embed(image.half()).float()
        return self.model.head(emb).reshape(-1), emb


def export_mii_onnx(
    model: MiiTriageNet,
    spec: PreprocessSpec,
    path: str | Path,
    *,
    fp16: bool = False,
    opset: int = 17,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export with outputs ``logits`` and ``embedding``, run the checker and the parity check.

    Parameters
    ----------
    model : MiiTriageNet
    spec : PreprocessSpec
        Gives the input shape (:func:`mii_preprocess_spec`).
    path : str or pathlib.Path
    fp16 : bool
        Weights and compute in float16 (for GPU providers); input and outputs stay float32.
        The parity check then runs :func:`fp16_parity_check` (ONNX Runtime fp16 vs torch fp32)
        when ONNX Runtime's CPU provider can run the graph.
    opset : int
    atol : float
        Parity tolerance for float32 (fp16 uses ``max(atol, 2e-2)`` on the embedding).

    Returns
    -------
    dict
        ``path``, ``dtype``, ``max_abs_diff_logits``, ``max_abs_diff_embedding``.
    """
    model = model.eval()
    if not fp16:
        out = export_onnx(model, spec, path, opset=opset)
        parity = parity_check(model, out, spec, atol=atol)
        return {"path": str(out), "dtype": "float32", **parity}
    out = export_onnx(Fp16Graph(model), spec, path, opset=opset)
    parity = fp16_parity_check(model, out, spec, atol=max(atol, 2e-2))
    return {"path": str(out), "dtype": "float16", **parity}


def fp16_parity_check(
    model: nn.Module,
    onnx_path: str | Path,
    spec: PreprocessSpec,
    *,
    atol: float = 2e-2,
    batch: int = 3,
    seed: int = 0,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """Compare an fp16 graph with the float32 torch model on random [0, 1] images.

    The logits are compared relative to their scale (``atol * max(1, |logit|)``).
    Returns ``{"skipped": reason}`` when no provider can run the fp16 graph.
    """
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(batch, *spec.shape)).astype(np.float32)
    with torch.no_grad():
        t_logits, t_emb = model.eval().float()(torch.from_numpy(x))
    try:
        sess = ort.InferenceSession(str(onnx_path), providers=providers or ["CPUExecutionProvider"])
        o_logits, o_emb = sess.run(["logits", "embedding"], {"image": x})
    except OrtNotImplemented as exc:
        logger.warning("fp16 parity not checked: %s", exc)
        return {"parity_skipped": str(exc).splitlines()[0][:200]}
    d_logits = float(
        np.max(np.abs(o_logits - t_logits.numpy()) / np.maximum(1, np.abs(t_logits.numpy())))
    )
    d_emb = float(np.max(np.abs(o_emb - t_emb.numpy())))
    if not (d_logits <= atol and d_emb <= atol):
        raise ParityError(
            f"fp16 parity failed: logits {d_logits:.3e}, embedding {d_emb:.3e} > {atol:g}"
        )
    return {"max_abs_diff_logits": d_logits, "max_abs_diff_embedding": d_emb}


def mii_card(
    *,
    name: str,
    version: str,
    variant: str,
    spec: PreprocessSpec,
    load: LoadReport | None,
    mode: str,
    head: dict[str, Any],
    export: dict[str, Any],
    model: MiiTriageNet,
    training: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
) -> ModelCard:
    """The model card of an exported MedImageInsight classifier."""
    preprocessing = spec.to_dict()
    preprocessing.update(
        {
            "normalisation": "in_graph",
            "channel_mean": list(IMAGENET_MEAN),
            "channel_std": list(IMAGENET_STD),
            "note": (
                "spec gives grey [0, 1] (percentile 1-99, stretched, no aspect kept) repeated to "
                "3 channels; the graph applies ImageNet per-channel mean/std"
            ),
        }
    )
    limitations = [
        (
            "Encoder pretrained by Microsoft (MedImageInsight); its training data and licence "
            "terms apply. Only the head (probe) or the later stages (finetune) were fitted here."
        ),
        (
            "Preprocessing follows Microsoft's (1st-99th percentile, 480x480 stretched) but keeps "
            "float values instead of 8-bit and clips after resizing rather than before."
        ),
    ]
    return ModelCard(
        name=name,
        version=version,
        intended_use=INTENDED_USE,
        limitations=limitations,
        architecture={
            "backbone": MII_BACKBONE,
            "timm_name": "davit_huge_fl",
            "variant": variant,
            "davit_kwargs": {k: list(v) for k, v in MII_VARIANTS[variant].davit_kwargs.items()},
            "description": "MedImageInsight image encoder (DaViT, davit_huge_fl structure) + "
            "bias-free projection + L2 normalisation",
            "mode": mode,
            "head": head,
            "pretrained": load is not None,
            "checkpoint": load.to_card() if load else None,
            "checkpoint_sha256": load.sha256 if load else None,
            "embedding_dim": model.embed_dim,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "gflops_per_image": MII_GFLOPS_PER_IMAGE if variant == "full" else None,
        },
        input=card_input(spec),
        outputs={
            "logits": {"shape": ["N"], "meaning": "abnormal logit (uncalibrated)"},
            "embedding": {
                "shape": ["N", model.embed_dim],
                "meaning": "MedImageInsight embedding (L2-normalised)",
            },
        },
        preprocessing=preprocessing,
        training_data=training_data or {},
        training={**(training or {}), "export": export},
    )
