"""Small PNG previews of received images for the study page.

The triage worker renders a preview once, in its guarded decode child (see
:mod:`triage.guarded_decode`), right after the image's frame header was checked, and
stores it under ``DATA_DIR/thumbnails``; the API only serves the stored file. The
API process never decodes pixel data, so a hostile image cannot make it allocate.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

__all__ = [
    "ThumbnailError",
    "missing_thumbnail",
    "png_from_dataset",
    "store_thumbnail",
    "thumbnail_path",
]

THUMBNAIL_DIR = "thumbnails"


class ThumbnailError(Exception):
    """The image cannot be rendered (no pixels, unsupported encoding)."""


def thumbnail_path(data_dir: str | Path, instance_id: int) -> Path:
    """Where the preview of an instance is stored (named by its database id).

    Parameters
    ----------
    data_dir : str or Path
        The node's data directory.
    instance_id : int
        ``instances.id``.

    Returns
    -------
    Path
    """
    return Path(data_dir) / THUMBNAIL_DIR / f"{int(instance_id)}.png"


def store_thumbnail(data_dir: str | Path, instance_id: int, png: bytes) -> Path:
    """Write a preview atomically (temporary file, then rename).

    Parameters
    ----------
    data_dir : str or Path
    instance_id : int
    png : bytes

    Returns
    -------
    Path
        The stored file.
    """
    path = thumbnail_path(data_dir, instance_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(png)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _shrunk(arr: np.ndarray, size: int) -> np.ndarray:
    """A grey frame averaged down by a whole factor while its shorter side keeps at least
    ``2 * size`` pixels (the LUTs and percentiles then run on far fewer pixels), in its
    own dtype, so that the modality and VOI LUTs apply as to the stored values."""
    factor = min(arr.shape) // (2 * size)
    if factor < 2:
        return arr
    small = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").reduce(factor))
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(small).astype(arr.dtype)
    return small.astype(arr.dtype)


def png_from_dataset(ds: Dataset, *, size: int = 256, pixels: np.ndarray | None = None) -> bytes:
    """Render a decoded DICOM image as a greyscale (or colour) PNG at most ``size`` pixels.

    The modality and VOI LUTs (window) are applied when present, MONOCHROME1 is
    inverted, and multi-frame images show their first frame. A large grey frame is
    first averaged down to at least twice ``size``. Call it only where pixel data may
    be decoded (the worker's guarded decode child), after the frame check.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance, with its pixel data (``ds.pixel_array`` is reused when decoded).
    size : int
        Longest side in pixels.
    pixels : numpy.ndarray, optional
        The first frame's stored values, already decoded (possibly at a reduced
        resolution, :func:`models.reduced_decode.decode_reduced`); default: decode ``ds``.

    Returns
    -------
    bytes
        PNG data.

    Raises
    ------
    ThumbnailError
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from models.preprocess import decode_pixels

    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if pixels is not None:
        arr = pixels
    else:
        try:
            arr = decode_pixels(ds)
        except Exception as exc:  # undecodable pixels
            raise ThumbnailError(f"cannot decode pixels: {type(exc).__name__}") from exc
        if frames > 1:
            arr = arr[0]
    if samples == 1:
        if arr.ndim == 2:
            arr = _shrunk(arr, size)
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        data = values
        with contextlib.suppress(ValueError, IndexError, TypeError):
            data = np.asarray(apply_voi_lut(values, ds), dtype=np.float32)
        lo, hi = _spread(data)
        if hi <= lo:  # a window the image does not fall in (a wrong header): ignore it
            data = values
            lo, hi = _spread(data)
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


def _spread(data: np.ndarray) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles of an image (0, 1 when empty)."""
    if not data.size:
        return 0.0, 1.0
    lo, hi = np.percentile(data, [0.5, 99.5])
    return float(lo), float(hi)


def missing_thumbnail(session: Session, *, instance_id: int) -> tuple[int, str]:
    """The HTTP status and reason to answer when an instance has no stored preview.

    Parameters
    ----------
    session : Session
    instance_id : int

    Returns
    -------
    tuple of (int, str)
        422 with the recorded reason when the worker could not decode the image,
        404 when no preview was made yet (not triaged yet, or not an image).
    """
    from sqlalchemy import select

    from worklist.tables import TriageImage

    reason = session.scalar(
        select(TriageImage.reason)
        .where(TriageImage.instance_id == instance_id)
        .order_by(TriageImage.id.desc())
        .limit(1)
    )
    if reason and reason.startswith("cannot_decode"):
        return 422, f"no preview: {reason}"
    return 404, "no preview of this image (not triaged yet, or it has no pixel data)"
