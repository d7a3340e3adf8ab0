"""Export a trained classifier to ONNX, run the checker and a parity check.

Follows timm's ``timm/utils/onnx.py``: a library function with a thin CLI
(``triage-model export``). The graph has one input ``image`` (N, C, H, W)
float32 with a dynamic batch axis and two outputs, ``logits`` (N,) and
``embedding`` (N, D); :func:`card_input` is the model card's entry for it. With
``cam=True`` (``triage-model export``, training from a checkpoint) a third output,
``cam`` (N, h, w), the class-activation map, is added when the model's logit is a
linear function of its pooled last feature map (the plain CNN, the gated pair, timm
ResNets; :mod:`models.cam_output`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.preprocess import PreprocessSpec

__all__ = ["ParityError", "card_input", "export_onnx", "parity_check"]

logger = logging.getLogger(__name__)


class ParityError(Exception):
    """ONNX Runtime output differs from the torch model beyond tolerance."""


def card_input(spec: PreprocessSpec) -> dict[str, Any]:
    """The model card's ``input`` entry for a graph written by :func:`export_onnx`.

    Parameters
    ----------
    spec : PreprocessSpec
        Gives the input shape.

    Returns
    -------
    dict
        Name, shape with the dynamic batch axis, dtype and layout of the input.
    """
    return {
        "name": "image",
        "shape": ["N", *spec.shape],
        "dtype": "float32",
        "layout": "NCHW",
        "batch": "dynamic",
    }


def export_onnx(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    path: str | Path,
    *,
    opset: int = 17,
    cam: bool = False,
) -> Path:
    """Trace ``model`` to ONNX with a dynamic batch axis and run the ONNX checker.

    Parameters
    ----------
    model : torch.nn.Module
        Returns ``(logits (N,), embedding (N, D))``.
    spec : PreprocessSpec
        Gives the input shape.
    path : str or pathlib.Path
        Output file.
    opset : int
        ONNX opset.
    cam : bool
        Add the ``cam`` output (:func:`models.cam_output.add_cam_output`) when the
        graph allows one; logged and left out when it does not.

    Returns
    -------
    pathlib.Path
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = torch.zeros((2, *spec.shape), dtype=torch.float32)
    # The TorchScript exporter (dynamo=False) is deprecated upstream but traces timm
    # CNNs with a dynamic batch axis reliably; the parity check guards the result.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["logits", "embedding"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    logger.info("ONNX checker passed for %s", path)
    if cam:
        from models.cam_output import CamNotDerivable, add_cam_output

        try:
            onnx.save(add_cam_output(proto), str(path))
        except CamNotDerivable as exc:
            logger.info("no class-activation-map output for %s: %s", path.name, exc)
    return path


def parity_check(
    model: torch.nn.Module,
    onnx_path: str | Path,
    spec: PreprocessSpec,
    *,
    atol: float = 1e-4,
    batch: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Compare ONNX Runtime (CPU) and torch outputs on random inputs.

    Uses a batch size different from the one traced, to exercise the dynamic
    axis.

    When the graph has a ``cam`` output, the mean of each map must equal the graph's
    logit within ``atol`` too (``max_abs_diff_cam_mean``).

    Raises
    ------
    ParityError
        If the largest absolute difference of the logits or embeddings (or of the maps'
        means and the logits) exceeds ``atol``.
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(batch, *spec.shape)).astype(np.float32)
    with torch.no_grad():
        t_logits, t_emb = model.eval()(torch.from_numpy(x))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    o_logits, o_emb = sess.run(["logits", "embedding"], {"image": x})
    d_logits = float(np.max(np.abs(o_logits.reshape(-1) - t_logits.numpy().reshape(-1))))
    d_emb = float(np.max(np.abs(o_emb - t_emb.numpy())))
    logger.info("parity: max abs diff logits %.3e, embedding %.3e", d_logits, d_emb)
    if not (d_logits <= atol and d_emb <= atol):
        raise ParityError(
            f"ONNX/torch parity failed: logits {d_logits:.3e}, embedding {d_emb:.3e} > {atol:g}"
        )
    diffs = {"max_abs_diff_logits": d_logits, "max_abs_diff_embedding": d_emb}
    if "cam" in {o.name for o in sess.get_outputs()}:
        (o_cam,) = sess.run(["cam"], {"image": x})
        d_cam = float(np.max(np.abs(o_cam.mean(axis=(1, 2)) - o_logits.reshape(-1))))
        if not d_cam <= atol:
            raise ParityError(
                f"the class-activation maps' means differ from the logits by {d_cam:.3e}"
            )
        diffs["max_abs_diff_cam_mean"] = d_cam
    return diffs
