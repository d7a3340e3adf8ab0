"""Selectable backbones for the triage classifier (training side; imports torch).

A backbone is a :class:`BackboneSpec` in :data:`BACKBONES`: the timm model name,
its keyword arguments and the default input size. The classifier is the timm
backbone (created with ``pretrained=False``: no download ever) with its pooled
features as the embedding and a single linear unit giving the abnormal logit.

A later backbone (e.g. MedImageInsight's DaViT encoder, timm ``davit_huge_fl``)
is another entry of :data:`BACKBONES`, optionally with its own ``builder``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

__all__ = ["BACKBONES", "BackboneSpec", "TriageNet", "build_model"]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Parameters
    ----------
    timm_name : str
        Name passed to :func:`timm.create_model`.
    kwargs : dict
        Extra keyword arguments for :func:`timm.create_model`.
    default_input_size : int
        Input size used when the caller does not choose one.
    description : str
        One line for the model card.
    builder : callable, optional
        ``builder(in_chans=..., drop=...)`` returning the whole classifier, for
        backbones that are more than a timm trunk (MedImageInsight).
    preprocess : dict
        Preprocessing the backbone expects (``PreprocessSpec`` fields).
    """

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    default_input_size: int = 128
    description: str = ""
    builder: Callable[..., nn.Module] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)


def _mii_builder(variant: str) -> Callable[..., nn.Module]:
    def build(*, in_chans: int = 3, drop: float = 0.0) -> nn.Module:
        from models.mii.network import build_mii_model

        return build_mii_model(variant, in_chans=in_chans, drop=drop)

    return build


#: MedImageInsight's preprocessing (see ``models.mii.network.mii_preprocess_spec``).
_MII_PREPROCESS = {
    "channels": 3,
    "window": "percentile",
    "low": 1.0,
    "high": 99.0,
    "mean": 0.0,
    "std": 1.0,
    "keep_aspect": False,
}


class PlainCNN(nn.Module):
    """Plain CNN: blocks of [conv3x3-BN-ReLU] x ``depth`` with max-pool between them.

    With the defaults, 8 conv layers (widths 32/64/128/256); the first conv has
    stride ``stem_stride`` (2: the 128 px input is seen at 64 px after it).
    Global average pooling gives ``num_features`` = the last width.
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        depth: int = 2,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for b, w in enumerate(widths):
            if b:
                layers.append(nn.MaxPool2d(2))
            for j in range(depth):
                stride = stem_stride if (b == 0 and j == 0) else 1
                layers += [
                    nn.Conv2d(c, w, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def _plaincnn_builder(**cnn_kwargs: Any) -> Callable[..., nn.Module]:
    def build(*, in_chans: int = 1, drop: float = 0.2) -> nn.Module:
        trunk = PlainCNN(in_chans=in_chans, **cnn_kwargs)
        return TriageNet(trunk, trunk.num_features, drop=drop)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "resnet10t": BackboneSpec("resnet10t", {}, 128, "ResNet-10-T (timm), 4.9 M parameters"),
    "resnet18": BackboneSpec("resnet18", {}, 128, "ResNet-18 (timm), 11 M parameters"),
    "mobilenetv3_small": BackboneSpec(
        "mobilenetv3_small_100", {}, 128, "MobileNetV3-Small 1.0 (timm), 1.5 M parameters"
    ),
    "mobilenetv3_large": BackboneSpec(
        "mobilenetv3_large_100", {}, 128, "MobileNetV3-Large 1.0 (timm), 4.2 M parameters"
    ),
    "regnetx_004": BackboneSpec("regnetx_004", {}, 128, "RegNetX-400MF (timm), 4.8 M parameters"),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0", {}, 128, "EfficientNet-B0 (timm), 4.0 M parameters"
    ),
    # the shipped default model's configuration
    "default": BackboneSpec(
        "mobilenetv3_small_100", {}, 160, "MobileNetV3-Small 1.0 (timm) at 160 px, the default"
    ),
    "plaincnn8": BackboneSpec(
        "plaincnn8",
        {},
        128,
        "plain 8-layer CNN ([conv3x3-BN-ReLU]x2 x 4 blocks, 32/64/128/256, max-pool), 1.2 M",
        builder=_plaincnn_builder(),
    ),
    "gated_plaincnn8": BackboneSpec(
        "gated_plaincnn8",
        {},
        128,
        "two plaincnn8 experts (pediatric; pediatric + adult) and a linear gate on their "
        "embeddings that recognises the pediatric source (models/mixture.py), 2.3 M",
        builder=lambda **kw: __import__("models.mixture", fromlist=["build_gated"]).build_gated(
            **kw
        ),
    ),
    "medimageinsight": BackboneSpec(
        "davit_huge_fl",
        {},
        480,
        "MedImageInsight image encoder (DaViT davit_huge_fl + 2048->1024 projection), 360 M",
        builder=_mii_builder("full"),
        preprocess={**_MII_PREPROCESS, "input_size": 480},
    ),
    "medimageinsight_tiny": BackboneSpec(
        "davit_huge_fl",
        {},
        96,
        "MedImageInsight structure, width-reduced (tests and smoke runs), 0.75 M",
        builder=_mii_builder("tiny"),
        preprocess={**_MII_PREPROCESS, "input_size": 96},
    ),
}


class TriageNet(nn.Module):
    """timm backbone + linear abnormal-logit head.

    ``forward`` returns ``(logits, embedding)`` with shapes ``(N,)`` and ``(N, D)``.
    """

    def __init__(self, backbone: nn.Module, num_features: int, drop: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.drop = nn.Dropout(drop)
        self.head = nn.Linear(num_features, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(image)
        logits = self.head(self.drop(emb)).squeeze(-1)
        return logits, emb


def build_model(name: str, in_chans: int = 1, drop: float = 0.2) -> nn.Module:
    """Create a randomly initialised classifier for a registered backbone.

    Parameters
    ----------
    name : str
        Key of :data:`BACKBONES`.
    in_chans : int
        Input channels (the preprocessing spec's ``channels``).
    drop : float
        Dropout before the head (training only).

    Returns
    -------
    torch.nn.Module
        A :class:`TriageNet`, or the spec's ``builder`` result (same ``forward`` contract).
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    if spec.builder is not None:
        return spec.builder(in_chans=in_chans, drop=drop)
    backbone = timm.create_model(
        spec.timm_name, pretrained=False, num_classes=0, in_chans=in_chans, **spec.kwargs
    )
    dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return TriageNet(backbone, int(dim), drop=drop)
