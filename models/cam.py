"""Class-activation maps of a trained checkpoint (imports torch and matplotlib).

For a backbone whose embedding is the global average of its last feature map
and whose head is one linear unit, the abnormal logit is the average over
positions of ``w . F(x, y)``; that map (upsampled) shows where the logit comes
from (Zhou et al., CVPR 2016).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from models.preprocess import preprocess_file

__all__ = ["class_activation_map", "draw_cams"]


@torch.no_grad()
def class_activation_map(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """CAM ``(H', W')`` of one preprocessed image ``(C, H, W)`` (plain-CNN backbones)."""
    model = getattr(model, "general", model)  # a gated pair: the general (adult) expert
    trunk = model.backbone
    feats = (
        trunk.features(torch.from_numpy(x[None]))
        if hasattr(trunk, "features")
        else trunk.forward_features(torch.from_numpy(x[None]))
    )
    w = model.head.weight[0]
    return torch.einsum("c,chw->hw", w, feats[0]).numpy()


def draw_cams(
    checkpoint: str | Path,
    predictions: str | Path,
    images_root: str | Path,
    threshold: float,
    out_png: str | Path,
    *,
    per_kind: int = 6,
) -> Path | None:
    """Draw CAMs of the ``per_kind`` most confident true and false positives.

    Parameters
    ----------
    checkpoint : str or pathlib.Path
        ``best.pt`` of the model that was evaluated.
    predictions : str or pathlib.Path
        ``predictions.csv`` (image,label,probability) of that evaluation.
    images_root : str or pathlib.Path
        Folder of the images.
    threshold : float
        Decision threshold (probability) separating positives.
    out_png : str or pathlib.Path
        Figure written.

    Returns
    -------
    pathlib.Path or None
        The figure, or None when there is no positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.train import load_checkpoint_model

    model, cfg, _ = load_checkpoint_model(checkpoint)
    spec = cfg.spec()
    with Path(predictions).open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["probability"]]
    pos = sorted(
        (r for r in rows if float(r["probability"]) >= threshold),
        key=lambda r: -float(r["probability"]),
    )
    tps = [r for r in pos if r["label"] == "abnormal"][:per_kind]
    fps = [r for r in pos if r["label"] == "normal"][:per_kind]
    if not tps and not fps:
        return None
    n = max(len(tps), len(fps))
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.8), squeeze=False)
    for row, (kind, items) in enumerate((("true positive", tps), ("false positive", fps))):
        for j in range(n):
            ax = axes[row, j]
            ax.axis("off")
            if j >= len(items):
                continue
            r = items[j]
            x = preprocess_file(Path(images_root) / r["image"], spec)
            cam = class_activation_map(model, x)
            cam = np.maximum(cam, 0)
            cam = cam / cam.max() if cam.max() > 0 else cam
            ax.imshow(x[0], cmap="gray")
            ax.imshow(
                cam,
                cmap="jet",
                alpha=0.35,
                extent=(0, x.shape[2], x.shape[1], 0),
                interpolation="bilinear",
            )
            ax.set_title(f"{kind}\np={float(r['probability']):.2f}", fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
