"""Export a trained classifier to ONNX, run the checker and a parity check.

Follows timm's ``timm/utils/onnx.py``: a library function with a thin CLI
(``triage-model export``). The graph has one input ``image`` (N, C, H, W)
float32 with a dynamic batch axis and two outputs, ``logits`` (N,) and
``embedding`` (N, D).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbones import BACKBONES
from models.card import ModelCard, embed_card
from models.preprocess import PreprocessSpec

__all__ = ["ParityError", "export_checkpoint", "export_onnx", "parity_check"]

logger = logging.getLogger(__name__)


INTENDED_USE = (
    "Worklist prioritisation of frontal (PA/AP) chest radiographs (CR/DX): the calibrated "
    "probability that an image is abnormal is used to move likely abnormal studies up a "
    "radiologist's reading list. Every study is still read by a radiologist; the output is not "
    "a diagnosis and must not be used to withhold or delay a read, nor on its own to treat."
)

LIMITATIONS = (
    (
        "Trained from scratch on 3,140 pediatric (age 1-5) chest radiographs from one hospital "
        "(Guangzhou; Kermany et al. 2018), where 'abnormal' means pneumonia (viral or bacterial); "
        "other findings (nodules, effusion, pneumothorax, cardiomegaly, lines and tubes, fractures) "
        "were not in the training labels."
    ),
    (
        "Does not transfer to adults as trained: on the 64 px NIH ChestX-ray14 adult thumbnails "
        "(another population, resolution and label set: any finding) ROC-AUC falls to about 0.6 "
        "(see the card's metrics); a site must validate, and usually fine-tune, on its own data "
        "before use."
    ),
    (
        "Training images were 224 px 8-bit JPEGs; the default model sees 160 px. Robustness to JPEG "
        "recompression, lower resolution and MONOCHROME1/12-16 bit DICOM is tested on degraded "
        "copies of the test split, not on images from other vendors with ground truth."
    ),
    (
        "No age or sex in the training labels: subgroup performance by sex and age is unknown on "
        "this data; the report lists missing demographics as their own group."
    ),
    (
        "Frontal views only; lateral views, other body parts and non-human images must be "
        "filtered out before the model (the node's series selection does this)."
    ),
    (
        "Calibration (temperature) and operating points were fitted on the validation split of the "
        "same hospital; prevalence at a new site changes the positive predictive value."
    ),
)


KERMANY_DESCRIPTION = (
    "Kermany et al., 'Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep "
    "Learning', Cell 2018 (Mendeley Data, CC BY 4.0): pediatric chest radiographs (age 1-5), "
    "Guangzhou Women and Children's Medical Center, resized to 224x224 and stored as 8-bit "
    "grayscale JPEG. normal = 'No Finding'; abnormal = viral or bacterial pneumonia. Splits "
    "train/val/test are disjoint by patient. No age or sex per image."
)


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
    model: torch.nn.Module, spec: PreprocessSpec, path: str | Path, *, opset: int = 17
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

    Raises
    ------
    ParityError
        If the largest absolute difference of the logits or embeddings exceeds ``atol``.
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
    return {"max_abs_diff_logits": d_logits, "max_abs_diff_embedding": d_emb}


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = 17,
    atol: float = 1e-4,
    name: str = "cxr-triage-default",
    version: str = "0.1.0",
    training_data_description: str = KERMANY_DESCRIPTION,
) -> dict[str, Any]:
    """Export a training checkpoint to ONNX with an initial (uncalibrated) model card.

    Returns
    -------
    dict
        ``path``, ``max_abs_diff_logits``, ``max_abs_diff_embedding``.
    """
    import json

    from models.train import load_checkpoint_model

    model, cfg, ckpt = load_checkpoint_model(checkpoint)
    spec = cfg.spec()
    path = export_onnx(model, spec, out, opset=opset)
    parity = parity_check(model, path, spec, atol=atol)
    bspec = BACKBONES[cfg.backbone]
    with torch.no_grad():
        emb_dim = int(model(torch.zeros((1, *spec.shape)))[1].shape[1])
    state = ckpt["state"]
    summary_file = Path(checkpoint).with_name("summary.json")
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    card = ModelCard(
        name=name,
        version=version,
        intended_use=INTENDED_USE,
        limitations=list(LIMITATIONS),
        architecture={
            "backbone": cfg.backbone,
            "timm_name": bspec.timm_name,
            "description": bspec.description,
            "head": "linear (1 unit, abnormal logit)",
            "pretrained": False,
            "embedding_dim": emb_dim,
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        input=card_input(spec),
        outputs={
            "logits": {"shape": ["N"], "meaning": "abnormal logit (uncalibrated)"},
            "embedding": {"shape": ["N", emb_dim], "meaning": "pooled backbone features"},
        },
        preprocessing=spec.to_dict(),
        training_data={
            "labels_file": Path(cfg.labels).name,
            "images_root": Path(cfg.images_root).name,
            "trained_on_split": "train",
            "calibrated_on_split": "val",
            "description": training_data_description,
        },
        training={
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val_roc_auc": state["best_auc"],
            "seconds": round(state["elapsed_s"], 1),
            "stop_reason": summary.get("stop_reason"),
            "config": {
                k: v
                for k, v in ckpt["config"].items()
                if k not in ("labels", "images_root", "out_dir")
            },
            "export": {"opset": opset, **parity},
        },
    )
    embed_card(path, card)
    return {"path": str(path), **parity}
