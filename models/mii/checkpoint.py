"""Strict loader of MedImageInsight safetensors checkpoints, and the key mapping.

The checkpoint is a safetensors file whose image keys start with
``image_encoder.`` (older files: ``visual.`` and ``vision_projection``). Its
own loader loads non-strictly, which can leave random weights in place
silently; :func:`load_mii_checkpoint` renames every image key to timm's name,
refuses unknown, missing, extra or mis-shaped tensors by name, checks the
tensor count and returns the file's SHA-256 for the model card.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.mii.network import MiiTriageNet

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "LoadReport",
    "MiiError",
    "convert_mii_state_dict",
    "file_sha256",
    "load_mii_checkpoint",
    "mii_to_timm_key",
    "timm_to_mii_key",
]

logger = logging.getLogger(__name__)

#: Prefixes of the image tower (current, older) and names of the projection.
IMAGE_PREFIXES = ("image_encoder.", "visual.")
PROJECTION_KEYS = ("image_projection", "vision_projection")
#: Top-level prefixes of the other towers of the checkpoint: present, ignored.
OTHER_PREFIXES = (
    "lang_encoder.",
    "text_encoder.",
    "lang_projection",
    "text_projection",
    "logit_scale",
)


class MiiError(Exception):
    """Root of the MedImageInsight errors."""


class CheckpointFormatError(MiiError):
    """The file is not a MedImageInsight checkpoint (format, prefix or key names)."""


class CheckpointMismatchError(MiiError):
    """The checkpoint's image tensors do not match the encoder (missing, extra, shape, count)."""


# (MII fragment, timm fragment) inside a block, applied in order; both directions are 1:1.
_BLOCK_RENAMES = (
    ("conv1.fn.dw.", "cpe1.proj."),
    ("conv2.fn.dw.", "cpe2.proj."),
    ("window_attn.norm.", "norm1."),
    ("window_attn.fn.", "attn."),
    ("channel_attn.norm.", "norm1."),
    ("channel_attn.fn.", "attn."),
    ("ffn.norm.", "norm2."),
    ("ffn.fn.net.", "mlp."),
)
_BLOCK_LEAVES = {
    "spatial_block": re.compile(
        r"^(conv1\.fn\.dw|conv2\.fn\.dw|window_attn\.norm|ffn\.norm)\.(weight|bias)$"
        r"|^window_attn\.fn\.(qkv|proj)\.(weight|bias)$|^ffn\.fn\.net\.(fc1|fc2)\.(weight|bias)$"
    ),
    "channel_block": re.compile(
        r"^(conv1\.fn\.dw|conv2\.fn\.dw|channel_attn\.norm|ffn\.norm)\.(weight|bias)$"
        r"|^channel_attn\.fn\.(qkv|proj)\.(weight|bias)$|^ffn\.fn\.net\.(fc1|fc2)\.(weight|bias)$"
    ),
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(spatial_block|channel_block|0|1)\.(.+)$")
_CONV_KEY = re.compile(r"^convs\.(\d+)\.(proj|norm)\.(weight|bias)$")
_NORMS_KEY = re.compile(r"^norms\.(weight|bias)$")


def mii_to_timm_key(key: str) -> str:
    """timm name (inside :class:`MiiTriageNet`) of a MedImageInsight image key.

    Parameters
    ----------
    key : str
        A key starting with ``image_encoder.``/``visual.`` or a projection name.

    Returns
    -------
    str
        e.g. ``backbone.trunk.stages.2.blocks.3.spatial_block.attn.qkv.weight``.

    Raises
    ------
    CheckpointFormatError
        When the key has no known image prefix or its name does not map.
    """
    if key in PROJECTION_KEYS:
        return "backbone.projection.weight"
    prefix = next((p for p in IMAGE_PREFIXES if key.startswith(p)), None)
    if prefix is None:
        raise CheckpointFormatError(
            f"checkpoint key {key!r} has no MedImageInsight image prefix {IMAGE_PREFIXES}"
        )
    rest = key[len(prefix) :]
    if m := _CONV_KEY.match(rest):
        stage, part, leaf = m.groups()
        tpart = "conv" if part == "proj" else "norm"
        where = "stem" if stage == "0" else f"stages.{stage}.downsample"
        return f"backbone.trunk.{where}.{tpart}.{leaf}"
    if m := _BLOCK_KEY.match(rest):
        stage, idx, kind, inner = m.groups()
        kind = {"0": "spatial_block", "1": "channel_block"}.get(kind, kind)
        if not _BLOCK_LEAVES[kind].match(inner):
            raise CheckpointFormatError(f"checkpoint key {key!r}: unknown {kind} tensor {inner!r}")
        for old, new in _BLOCK_RENAMES:
            if inner.startswith(old):
                inner = new + inner[len(old) :]
                break
        return f"backbone.trunk.stages.{stage}.blocks.{idx}.{kind}.{inner}"
    if m := _NORMS_KEY.match(rest):
        return f"backbone.trunk.head.norm.{m.group(1)}"
    raise CheckpointFormatError(
        f"checkpoint key {key!r} is not a known MedImageInsight image tensor"
    )


def timm_to_mii_key(name: str, *, prefix: str = "image_encoder.") -> str:
    """Inverse of :func:`mii_to_timm_key` (``backbone.*`` names of :class:`MiiTriageNet`)."""
    if name == "backbone.projection.weight":
        return "image_projection" if prefix == "image_encoder." else "vision_projection"
    if not name.startswith("backbone.trunk."):
        raise KeyError(f"{name!r} is not an encoder tensor")
    rest = name[len("backbone.trunk.") :]
    if rest.startswith("stem."):
        part, leaf = rest[len("stem.") :].split(".")
        return f"{prefix}convs.0.{'proj' if part == 'conv' else 'norm'}.{leaf}"
    if m := re.match(r"^stages\.(\d+)\.downsample\.(conv|norm)\.(weight|bias)$", rest):
        stage, part, leaf = m.groups()
        return f"{prefix}convs.{stage}.{'proj' if part == 'conv' else 'norm'}.{leaf}"
    if m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(spatial_block|channel_block)\.(.+)$", rest):
        stage, idx, kind, inner = m.groups()
        attn = "window_attn" if kind == "spatial_block" else "channel_attn"
        for old, new in (
            ("cpe1.proj.", "conv1.fn.dw."),
            ("cpe2.proj.", "conv2.fn.dw."),
            ("norm1.", f"{attn}.norm."),
            ("attn.", f"{attn}.fn."),
            ("norm2.", "ffn.norm."),
            ("mlp.", "ffn.fn.net."),
        ):
            if inner.startswith(old):
                inner = new + inner[len(old) :]
                break
        return f"{prefix}blocks.{stage}.{idx}.{kind}.{inner}"
    if m := re.match(r"^head\.norm\.(weight|bias)$", rest):
        return f"{prefix}norms.{m.group(1)}"
    raise KeyError(f"no MedImageInsight name for {name!r}")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_mii_checkpoint` loaded (recorded in the model card)."""

    path: str
    sha256: str
    prefix: str
    n_image_tensors: int
    n_ignored_tensors: int
    n_parameters: int

    def to_card(self) -> dict[str, Any]:
        """The card's ``architecture.checkpoint`` entry."""
        return {
            "file": Path(self.path).name,
            "sha256": self.sha256,
            "format": "safetensors",
            "image_prefix": self.prefix,
            "image_tensors": self.n_image_tensors,
            "ignored_tensors": self.n_ignored_tensors,
            "encoder_parameters": self.n_parameters,
            "load": "strict (every encoder tensor renamed and loaded, nothing left random)",
        }


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"MedImageInsight checkpoint not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from exc


def convert_mii_state_dict(
    tensors: Mapping[str, torch.Tensor], encoder_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str, int]:
    """Rename and check MedImageInsight image tensors against an encoder's state dict.

    Parameters
    ----------
    tensors : mapping
        All tensors of the checkpoint.
    encoder_state : mapping
        ``MiiTriageNet.state_dict()`` restricted to ``backbone.*``: the expected names and shapes.

    Returns
    -------
    (dict, str, int)
        timm-named tensors, the image prefix found, the number of ignored (text tower) tensors.

    Raises
    ------
    CheckpointFormatError, CheckpointMismatchError
    """
    image_keys = [k for k in tensors if k.startswith(IMAGE_PREFIXES) or k in PROJECTION_KEYS]
    ignored = [k for k in tensors if k not in image_keys and k.startswith(OTHER_PREFIXES)]
    unknown = sorted(set(tensors) - set(image_keys) - set(ignored))
    if not image_keys:
        raise CheckpointFormatError(
            f"no MedImageInsight image tensors: no key starts with {IMAGE_PREFIXES} "
            f"(first keys: {sorted(tensors)[:5]})"
        )
    if unknown:
        raise CheckpointFormatError(
            f"checkpoint has {len(unknown)} key(s) with an unknown prefix, e.g. {unknown[:5]}"
        )
    prefixes = {p for p in IMAGE_PREFIXES for k in image_keys if k.startswith(p)}
    if len(prefixes) != 1:
        raise CheckpointFormatError(f"checkpoint mixes image prefixes {sorted(prefixes)}")
    prefix = prefixes.pop()
    out: dict[str, torch.Tensor] = {}
    for key in image_keys:
        name = mii_to_timm_key(key)
        if name in out:
            raise CheckpointFormatError(f"checkpoint key {key!r} duplicates {name!r}")
        value = tensors[key]
        if name == "backbone.projection.weight" and name in encoder_state:
            want = tuple(encoder_state[name].shape)
            if tuple(value.shape) == want[::-1]:
                value = value.t()  # stored (in, out), applied as x @ P
        out[name] = value
    missing = sorted(set(encoder_state) - set(out))
    extra = sorted(set(out) - set(encoder_state))
    if missing or extra:
        rev = {mii_to_timm_key(k): k for k in image_keys}
        raise CheckpointMismatchError(
            "checkpoint does not match the encoder: "
            + (
                f"missing {len(missing)} tensor(s), e.g. "
                f"{[timm_to_mii_key(m, prefix=prefix) for m in missing[:5]]}"
                if missing
                else ""
            )
            + ("; " if missing and extra else "")
            + (f"unexpected {len(extra)}, e.g. {[rev[e] for e in extra[:5]]}" if extra else "")
        )
    for name, value in out.items():
        want = tuple(encoder_state[name].shape)
        if tuple(value.shape) != want:
            raise CheckpointMismatchError(
                f"tensor {timm_to_mii_key(name, prefix=prefix)!r} has shape {tuple(value.shape)}, "
                f"the encoder needs {want}"
            )
    if len(out) != len(encoder_state):
        raise CheckpointMismatchError(
            f"loaded {len(out)} image tensors, the encoder has {len(encoder_state)}"
        )
    return out, prefix, len(ignored)


def load_mii_checkpoint(model: MiiTriageNet, path: str | Path) -> LoadReport:
    """Load a MedImageInsight safetensors checkpoint into ``model``'s encoder, strictly.

    Every image tensor is renamed to timm's name; any missing, extra, unknown
    or mis-shaped tensor raises, naming the checkpoint key. Text-tower tensors
    (``lang_encoder.*``, ``lang_projection``, ``logit_scale``) are ignored.

    Parameters
    ----------
    model : MiiTriageNet
    path : str or pathlib.Path
        The ``.safetensors`` file.

    Returns
    -------
    LoadReport
        With the file's SHA-256 for the model card.

    Raises
    ------
    FileNotFoundError, CheckpointFormatError, CheckpointMismatchError
    """
    path = Path(path)
    tensors = _read_safetensors(path)
    encoder_state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    converted, prefix, n_ignored = convert_mii_state_dict(tensors, encoder_state)
    result = model.backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in converted.items()}, strict=True
    )
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; belt and braces
        raise CheckpointMismatchError(f"strict load left {result}")
    report = LoadReport(
        path=str(path),
        sha256=file_sha256(path),
        prefix=prefix,
        n_image_tensors=len(converted),
        n_ignored_tensors=n_ignored,
        n_parameters=int(sum(v.numel() for v in converted.values())),
    )
    logger.info(
        "loaded %d MedImageInsight tensors (%s..., %.1f M parameters) from %s, sha256 %s",
        report.n_image_tensors,
        prefix,
        report.n_parameters / 1e6,
        path.name,
        report.sha256[:12],
    )
    return report
