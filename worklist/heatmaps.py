"""Heatmaps of evaluated images: where they are kept and how the page shows them.

The worker stores one map per evaluated image of an abnormal study -- the model's
class-activation map (:mod:`models.cam_output`) when its card declares one, else an
occlusion map (:mod:`models.occlusion`) -- as a small ``.npy`` file under
``DATA_DIR/heatmaps/<Study UID>/r<revision>/<SOP UID>.npy``; the HTTP side renders it
over the image's thumbnail. The map covers the model's input: the whole image when
the preprocessing stretches it, the image inside its black padding when it keeps the
aspect ratio (``keep_aspect``), which :func:`overlay_png` crops away.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = [
    "LABEL",
    "heatmap_path",
    "load_heatmap",
    "overlay_png",
    "overlay_rgb",
    "save_heatmap",
]

#: What the overlay is, wherever it is shown.
LABEL = "AI heatmap, not for diagnosis"


def _safe(uid: str) -> str:
    if not uid or not all(c.isdigit() or c == "." for c in uid) or len(uid) > 64:
        raise ValueError(f"not a DICOM UID: {uid!r}")
    return uid


def heatmap_path(data_dir: Path, study_uid: str, revision: int, sop_uid: str) -> Path:
    """Where the map of one image of one triage revision is kept.

    Parameters
    ----------
    data_dir : Path
        ``Settings.data_dir``.
    study_uid, sop_uid : str
        DICOM UIDs (digits and dots only, so the path is safe).
    revision : int

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        When a UID is not a DICOM UID.
    """
    folder = Path(data_dir) / "heatmaps" / _safe(study_uid) / f"r{int(revision)}"
    return folder / f"{_safe(sop_uid)}.npy"


def save_heatmap(path: Path, heatmap: np.ndarray) -> Path:
    """Write a map atomically (temporary file, then rename).

    Parameters
    ----------
    path : Path
        From :func:`heatmap_path`.
    heatmap : numpy.ndarray
        2-D, values in [0, 1].

    Returns
    -------
    Path
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.asarray(heatmap, dtype=np.float16), allow_pickle=False)
    os.replace(tmp, path)
    return path


def load_heatmap(path: Path) -> np.ndarray | None:
    """The map at ``path`` as float32, or None when there is none."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except FileNotFoundError:
        return None


def overlay_rgb(
    thumbnail_png: bytes, heatmap: np.ndarray, *, keep_aspect: bool = False
) -> np.ndarray:
    """The thumbnail with the map laid over it in red (transparent where the map is 0).

    Parameters
    ----------
    thumbnail_png : bytes
        The image's stored grey preview (:func:`worklist.thumbnails.thumbnail_path`).
    heatmap : numpy.ndarray
        2-D map in [0, 1] over the model's input.
    keep_aspect : bool
        The model's input was the image padded to a square (crop the padding away).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB of the thumbnail's size.
    """
    from PIL import Image

    base = Image.open(io.BytesIO(thumbnail_png)).convert("RGB")
    width, height = base.size
    grid = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    side = max(width, height)
    # Up-sample the coarse grid smoothly over the model's input square.
    square = Image.fromarray((grid * 255).astype(np.uint8), mode="L").resize(
        (side, side) if keep_aspect else (width, height), Image.Resampling.BILINEAR
    )
    if keep_aspect:
        left, top = (side - width) // 2, (side - height) // 2
        square = square.crop((left, top, left + width, top + height))
    alpha = np.asarray(square, dtype=np.float32) / 255.0 * 0.6
    rgb = np.asarray(base, dtype=np.float32)
    red = np.array([230.0, 30.0, 30.0], dtype=np.float32)
    blended = rgb * (1 - alpha[..., None]) + red * alpha[..., None]
    return blended.clip(0, 255).astype(np.uint8)


def overlay_png(thumbnail_png: bytes, heatmap: np.ndarray, *, keep_aspect: bool = False) -> bytes:
    """:func:`overlay_rgb` as an RGB PNG (what the study page shows)."""
    from PIL import Image

    out = io.BytesIO()
    rgb = overlay_rgb(thumbnail_png, heatmap, keep_aspect=keep_aspect)
    Image.fromarray(rgb, mode="RGB").save(out, format="PNG")
    return out.getvalue()
