"""Synthetic MedImageInsight checkpoints for the tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from models.mii.checkpoint import timm_to_mii_key
from models.mii.network import MiiTriageNet

__all__ = ["write_synthetic_mii_checkpoint"]


def write_synthetic_mii_checkpoint(
    model: MiiTriageNet,
    path: str | Path,
    *,
    prefix: str = "image_encoder.",
    text_tensors: bool = True,
    rename: Mapping[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write ``model``'s encoder with MedImageInsight's key names (tests, smoke runs).

    The projection is stored transposed (``(in, out)``) as MedImageInsight stores
    it. ``rename`` maps MII keys to other names and ``drop`` removes keys, to
    build broken checkpoints.
    """
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    for name, value in model.backbone.state_dict().items():
        key = timm_to_mii_key(f"backbone.{name}", prefix=prefix)
        if key in drop:
            continue
        if name == "projection.weight":
            value = value.t()
        out[(rename or {}).get(key, key)] = value.detach().clone().contiguous()
    if text_tensors:
        out["lang_encoder.token_embedding.weight"] = torch.zeros(8, 4)
        out["lang_projection"] = torch.zeros(4, model.embed_dim)
        out["logit_scale"] = torch.ones(())
    save_file(out, str(path))
    return Path(path)
