"""MedImageInsight (MII) image encoder: spec, strict checkpoint loader, ONNX export.

MedImageInsight's image tower is a DaViT with the structure of timm's
``davit_huge_fl`` (dims 256/512/1024/2048, depths 1/1/9/1, window 12,
channel attention v2, named spatial/channel blocks), followed by a bias-free
2048 -> 1024 projection (``image_projection``, stored as ``(2048, 1024)`` and
applied as ``x @ P``) and L2 normalisation: the 1024-d embedding.

The checkpoint is a safetensors file whose image keys start with
``image_encoder.`` (older files: ``visual.`` and ``vision_projection``). Its
own loader loads non-strictly, which can leave random weights in place
silently; :func:`load_mii_checkpoint` renames every image key to timm's name,
refuses unknown, missing, extra or mis-shaped tensors by name, checks the
tensor count and returns the file's SHA-256 for the model card.

The exported graph keeps the node's contract (input ``image`` float32
``(N, C, H, W)``; outputs ``logits`` ``(N,)`` and ``embedding`` ``(N, 1024)``).
ImageNet's per-channel mean and std are applied *inside* the graph, because
:class:`~models.preprocess.PreprocessSpec` normalises with one scalar mean/std:
the spec produces the grey image windowed to [0, 1] (``mean=0``, ``std=1``)
repeated to 3 channels, and the card records the in-graph normalisation.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "LoadReport",
    "MiiEncoder",
    "MiiError",
    "MiiTriageNet",
    "MiiVariant",
    "build_mii_model",
    "export_mii_onnx",
    "file_sha256",
    "fp16_parity_check",
    "load_mii_checkpoint",
    "mii_card",
    "mii_preprocess_spec",
    "mii_to_timm_key",
    "timm_to_mii_key",
    "write_synthetic_mii_checkpoint",
]

logger = logging.getLogger(__name__)

MII_BACKBONE = "medimageinsight"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Forward cost of the full encoder at 480 x 480 (the issue's figure; multiply-adds x 2).
MII_GFLOPS_PER_IMAGE = 625.0

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


# -- key mapping ------------------------------------------------------------------------------

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


# -- loading ----------------------------------------------------------------------------------


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


# -- export -----------------------------------------------------------------------------------


class _Fp16Graph(nn.Module):
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
    from models.export import export_onnx, parity_check

    model = model.eval()
    if not fp16:
        out = export_onnx(model, spec, path, opset=opset)
        parity = parity_check(model, out, spec, atol=atol)
        return {"path": str(out), "dtype": "float32", **parity}
    out = export_onnx(_Fp16Graph(model), spec, path, opset=opset)
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

    from models.export import ParityError

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
) -> Any:
    """The model card of an exported MedImageInsight classifier."""
    from models.card import ModelCard
    from models.export import INTENDED_USE, card_input

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
            "Encoder pretrained by Microsoft (MedImageInsight); its training data and licence terms "
            "apply. Only the head (probe) or the later stages (finetune) were fitted here."
        ),
        (
            "Preprocessing follows Microsoft's (1st-99th percentile, 480x480 stretched) but keeps float "
            "values instead of 8-bit and clips after resizing rather than before."
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
