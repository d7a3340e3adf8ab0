"""Small PNG previews of received images for the study page."""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from models.preprocess import decode_pixels

__all__ = ["ThumbnailError", "render_thumbnail"]


class ThumbnailError(Exception):
    """The file cannot be rendered (missing, no pixels, unsupported encoding)."""


def render_thumbnail(path: str | Path, *, size: int = 256) -> bytes:
    """Render a DICOM image as a greyscale (or colour) PNG at most ``size`` pixels.

    The modality and VOI LUTs (window) are applied when present, MONOCHROME1 is
    inverted, and multi-frame images show their first frame. Recent renderings are
    kept in memory (keyed by path, size and modification time), so that reopening a
    study does not decode its radiographs again.

    Parameters
    ----------
    path : str or Path
        The instance in the spool.
    size : int
        Longest side in pixels.

    Returns
    -------
    bytes
        PNG data.

    Raises
    ------
    ThumbnailError
    """
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError as exc:
        raise ThumbnailError(f"cannot read the file: {type(exc).__name__}") from exc
    return _render(str(path), size, mtime)


@lru_cache(maxsize=128)
def _render(path: str, size: int, _mtime: int) -> bytes:
    try:
        ds = pydicom.dcmread(path, force=True)
        arr = decode_pixels(ds)
    except Exception as exc:  # unreadable file or undecodable pixels
        raise ThumbnailError(f"cannot decode pixels: {type(exc).__name__}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples == 1:
        data = apply_modality_lut(arr, ds)
        with contextlib.suppress(ValueError, IndexError, TypeError):
            data = apply_voi_lut(data, ds)
        data = np.asarray(data, dtype=np.float64)
        lo, hi = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        data = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            data = 1.0 - data
        image = Image.fromarray((data * 255).astype(np.uint8), mode="L")
    else:
        data = np.asarray(arr)
        if data.dtype != np.uint8:
            data = (255 * (data - data.min()) / max(1, np.ptp(data))).astype(np.uint8)
        image = Image.fromarray(data[..., :3], mode="RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
