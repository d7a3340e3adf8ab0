"""Export a training checkpoint to ONNX with the default model's card.

The mechanism (export, checker, parity check, the card's input entry) is
:mod:`models.onnx_export`; this module adds what the shipped default model's
card says: its limitations and its training data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.backbones import BACKBONES
from models.card import INTENDED_USE, ModelCard, embed_card
from models.onnx_export import card_input, export_onnx, parity_check
from models.train import load_checkpoint_model

__all__ = ["KERMANY_DESCRIPTION", "LIMITATIONS", "export_checkpoint"]


LIMITATIONS = (
    (
        "Trained from scratch on 3,140 pediatric (age 1-5) chest radiographs from one hospital "
        "(Guangzhou; Kermany et al. 2018), where 'abnormal' means pneumonia (viral or bacterial); "
        "other findings (nodules, effusion, pneumothorax, cardiomegaly, lines and tubes, "
        "fractures) were not in the training labels."
    ),
    (
        "Does not transfer to adults as trained: on the 64 px NIH ChestX-ray14 adult thumbnails "
        "(another population, resolution and label set: any finding) ROC-AUC falls to about 0.6 "
        "(see the card's metrics); a site must validate, and usually fine-tune, on its own data "
        "before use."
    ),
    (
        "Training images were 224 px 8-bit JPEGs; the default model sees 160 px. Robustness to "
        "JPEG recompression, lower resolution and MONOCHROME1/12-16 bit DICOM is tested on "
        "degraded copies of the test split, not on images from other vendors with ground truth."
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


def _cam_outputs(path: Path) -> dict[str, Any]:
    """The card's ``cam`` entry when the exported graph has that output."""
    import onnx

    from models.cam_output import CAM_OUTPUT, cam_card_entry, cam_shape

    shape = cam_shape(onnx.load(str(path)))
    return {CAM_OUTPUT: cam_card_entry(shape)} if shape is not None else {}


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
    model, cfg, ckpt = load_checkpoint_model(checkpoint)
    spec = cfg.spec()
    path = export_onnx(model, spec, out, opset=opset, cam=True)
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
            **_cam_outputs(path),
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
