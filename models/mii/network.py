"""MedImageInsight's network: variants, preprocessing spec and the torch classifier.

The exported graph keeps the node's contract (input ``image`` float32
``(N, C, H, W)``; outputs ``logits`` ``(N,)`` and ``embedding`` ``(N, 1024)``).
ImageNet's per-channel mean and std are applied *inside* the graph, because
:class:`~models.preprocess.PreprocessSpec` normalises with one scalar mean/std:
the spec produces the grey image windowed to [0, 1] (``mean=0``, ``std=1``)
repeated to 3 channels, and the card records the in-graph normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from models.preprocess import PreprocessSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MII_BACKBONE",
    "MII_GFLOPS_PER_IMAGE",
    "MII_VARIANTS",
    "MiiEncoder",
    "MiiTriageNet",
    "MiiVariant",
    "build_mii_model",
    "mii_preprocess_spec",
]

MII_BACKBONE = "medimageinsight"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Forward cost of the full encoder at 480 x 480 (the issue's figure; multiply-adds x 2).
MII_GFLOPS_PER_IMAGE = 625.0


@dataclass(frozen=True)
class MiiVariant:
    """A DaViT configuration with MedImageInsight's structure.

    Parameters
    ----------
    davit_kwargs : dict
        Keyword arguments of ``timm.create_model("davit_huge_fl", ...)`` overriding its defaults.
    embed_dim : int
        Output size of the projection.
    input_size : int
        Preprocessing input size.
    """

    davit_kwargs: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 1024
    input_size: int = 480


MII_VARIANTS: dict[str, MiiVariant] = {
    # the real encoder: davit_huge_fl's own defaults
    "full": MiiVariant({}, 1024, 480),
    # same structure, width and depth reduced: for tests and CPU smoke runs
    "tiny": MiiVariant(
        {"depths": (1, 1, 2, 1), "embed_dims": (16, 32, 64, 128), "num_heads": (1, 2, 4, 8)},
        64,
        96,
    ),
}


def mii_preprocess_spec(input_size: int = 480) -> PreprocessSpec:
    """Microsoft's DICOM preprocessing expressed as a :class:`PreprocessSpec`.

    Percentile window 1-99, stretch to ``input_size`` square (no aspect kept),
    grey repeated to 3 channels in [0, 1]; ImageNet mean/std are in the graph.
    Microsoft's pipeline also quantises to 8 bits after clipping and clips
    before resizing; the node keeps float values and clips after resizing.
    """
    return PreprocessSpec(
        input_size=input_size,
        channels=3,
        window="percentile",
        low=1.0,
        high=99.0,
        mean=0.0,
        std=1.0,
        keep_aspect=False,
        resample="bilinear",
    )


# -- model -----------------------------------------------------------------------------------


class MiiEncoder(nn.Module):
    """DaViT trunk -> pooled features -> bias-free projection -> L2 normalisation."""

    def __init__(self, variant: MiiVariant) -> None:
        super().__init__()
        self.trunk = timm.create_model(
            "davit_huge_fl", pretrained=False, num_classes=0, **variant.davit_kwargs
        )
        self.projection = nn.Linear(int(self.trunk.num_features), variant.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.trunk(x)), dim=-1)


class MiiTriageNet(nn.Module):
    """MedImageInsight encoder + abnormal-logit head, with ImageNet normalisation in the graph.

    ``forward(image)`` takes the preprocessed image in [0, 1] (1 or 3 channels;
    1 is repeated) and returns ``(logits (N,), embedding (N, D))`` like
    :class:`models.backbones.TriageNet`. ``head`` maps ``(N, D)`` to ``(N, 1)``
    or ``(N,)``: a linear unit (finetune) or a fitted probe head.
    """

    def __init__(self, variant: MiiVariant, drop: float = 0.0, in_chans: int = 3) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"MedImageInsight takes 1 or 3 input channels, got {in_chans}")
        self.variant = variant
        self.in_chans = in_chans
        self.backbone = MiiEncoder(variant)
        self.drop = nn.Dropout(drop)
        self.head: nn.Module = nn.Linear(variant.embed_dim, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        """Size of the embedding output."""
        return self.variant.embed_dim

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding of preprocessed images."""
        if self.in_chans == 1:
            image = image.expand(-1, 3, -1, -1)
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        return self.backbone(x)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(image)
        logits = self.head(self.drop(emb)).reshape(-1)
        return logits, emb

    def freeze_early(self) -> list[str]:
        """Freeze the stem and the first stage (finetune recipe); return the frozen prefixes."""
        frozen = ["backbone.trunk.stem.", "backbone.trunk.stages.0."]
        for name, p in self.named_parameters():
            if name.startswith(tuple(frozen)):
                p.requires_grad_(False)
        return frozen


def build_mii_model(variant: str = "full", *, in_chans: int = 3, drop: float = 0.0) -> MiiTriageNet:
    """Randomly initialised :class:`MiiTriageNet` (load weights with :func:`load_mii_checkpoint`).

    Parameters
    ----------
    variant : str
        Key of :data:`MII_VARIANTS`.
    in_chans : int
        1 or 3: a 1-channel input is repeated inside the graph.
    drop : float
        Dropout before the head.
    """
    if variant not in MII_VARIANTS:
        raise KeyError(
            f"unknown MedImageInsight variant {variant!r}; known: {sorted(MII_VARIANTS)}"
        )
    return MiiTriageNet(MII_VARIANTS[variant], drop=drop, in_chans=in_chans)
