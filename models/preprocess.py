"""One preprocessing implementation for training and inference.

Only numpy, pydicom and Pillow are used here (no torch), so the triage workers
and the training recipes share exactly the same code path.

Pipeline (DICOM)::

    pixel data (decoded by pydicom + pylibjpeg/openjpeg plugins)
      -> modality LUT (Rescale Slope/Intercept or Modality LUT Sequence)
      -> optional VOI LUT / window (``window='voi'``)
      -> float32, resize to ``input_size`` (Pillow, antialiased)
      -> percentile clipping to [0, 1] (``window='percentile'``) or min-max
      -> invert if the image is displayed inverted (MONOCHROME1)
      -> (x - mean) / std, repeated to ``channels``

PNG/JPEG images (training data) enter the same pipeline after decoding, as
MONOCHROME2 without any LUT.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

__all__ = [
    "PreprocessError",
    "PreprocessSpec",
    "dataset_to_display_array",
    "preprocess_array",
    "preprocess_dataset",
    "preprocess_file",
    "preprocess_pil",
]

logger = logging.getLogger(__name__)

#: Largest number of pixels we agree to decode for one frame (guards against
#: headers such as Rows = Columns = 46341 with a few kB of pixel data).
MAX_PIXELS = 12_000 * 12_000

_WINDOW_METHODS = ("percentile", "voi", "minmax")


class PreprocessError(Exception):
    """An image that cannot be turned into a model input, with a readable reason."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input tensor.

    Parameters
    ----------
    input_size : int
        Output height and width in pixels (square).
    channels : int
        Number of output channels (the grey image is repeated).
    window : str
        ``'percentile'`` (clip to the ``low``/``high`` percentiles of the
        resized image, then scale to [0, 1]), ``'voi'`` (apply the DICOM VOI
        LUT or window when present, then min-max; falls back to percentile
        when the dataset has none) or ``'minmax'``.
    low, high : float
        Percentiles (0-100) used by ``'percentile'``.
    mean, std : float
        Normalisation applied after windowing: ``(x - mean) / std``.
    keep_aspect : bool
        If true, resize the longer side to ``input_size`` and pad the shorter
        side symmetrically with black (0 after windowing); otherwise stretch.
    resample : str
        Pillow resampling filter name (``'bilinear'``, ``'bicubic'``,
        ``'box'``, ``'lanczos'``).
    """

    input_size: int = 128
    channels: int = 1
    window: str = "percentile"
    low: float = 0.5
    high: float = 99.5
    mean: float = 0.5
    std: float = 0.25
    keep_aspect: bool = False
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.window not in _WINDOW_METHODS:
            raise ValueError(f"window must be one of {_WINDOW_METHODS}, got {self.window!r}")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(f"need 0 <= low < high <= 100, got {self.low}, {self.high}")
        if self.input_size < 8 or self.channels < 1 or self.std <= 0:
            raise ValueError("input_size >= 8, channels >= 1 and std > 0 are required")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output shape ``(C, H, W)``."""
        return (self.channels, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the model card's ``preprocessing``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def _resize_float(arr: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a 2-D float32 array; return it and a validity mask when padded."""
    h, w = arr.shape
    size = spec.input_size
    if spec.keep_aspect:
        scale = size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    else:
        new_w, new_h = size, size
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    if (new_w, new_h) != (w, h):
        # reducing_gap first shrinks by an integer factor with a box filter:
        # keeps a 2k x 2k radiograph well under 100 ms.
        img = img.resize((new_w, new_h), _RESAMPLE[spec.resample], reducing_gap=3.0)
    out = np.asarray(img, dtype=np.float32)
    if (new_w, new_h) == (size, size):
        return out, None
    canvas = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = out
    mask[top : top + new_h, left : left + new_w] = True
    return canvas, mask


def _scale_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def preprocess_array(
    arr: np.ndarray,
    spec: PreprocessSpec,
    *,
    invert: bool = False,
    windowed: bool = False,
) -> np.ndarray:
    """Turn a 2-D grey image (any numeric dtype) into the model input.

    Parameters
    ----------
    arr : numpy.ndarray
        2-D image, values after the modality LUT (or raw PNG values).
    spec : PreprocessSpec
        Preprocessing parameters.
    invert : bool
        Invert after windowing (MONOCHROME1).
    windowed : bool
        The values already went through a VOI LUT/window; only min-max scale.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``spec.shape``.

    Raises
    ------
    PreprocessError
        If the array is not a non-empty 2-D image or holds no finite value.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.size == 0:
        raise PreprocessError(f"not a single-frame grayscale image: array shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        finite = np.isfinite(arr)
        if not finite.any():
            raise PreprocessError("image holds no finite pixel value")
        arr = np.where(finite, arr, np.nanmin(np.where(finite, arr, np.nan)))
    small, mask = _resize_float(arr, spec)
    valid = small if mask is None else small[mask]
    if spec.window == "percentile" and not windowed:
        lo, hi = np.percentile(valid, [spec.low, spec.high])
    else:
        lo, hi = float(valid.min()), float(valid.max())
    unit = _scale_unit(small, float(lo), float(hi))
    if invert:
        unit = 1.0 - unit
    if mask is not None:
        unit[~mask] = 0.0
    out = (unit - spec.mean) / spec.std
    return np.repeat(out[None].astype(np.float32, copy=False), spec.channels, axis=0)


def _is_inverted(ds: pydicom.Dataset) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1":
        # For MONOCHROME1, DX/CR IODs require PresentationLUTShape INVERSE (or absent).
        return True
    return photometric == "MONOCHROME2" and shape == "INVERSE"


def _check_geometry(ds: pydicom.Dataset) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PreprocessError("cannot decode pixel data: the dataset has no Pixel Data")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if spp != 1 or (photometric and photometric not in ("MONOCHROME1", "MONOCHROME2")):
        raise PreprocessError(
            "not a single-frame grayscale image: "
            f"SamplesPerPixel={spp}, PhotometricInterpretation={photometric or 'missing'}"
        )
    if frames != 1:
        raise PreprocessError(f"not a single-frame grayscale image: NumberOfFrames={frames}")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise PreprocessError(f"cannot decode pixel data: Rows={rows}, Columns={cols}")
    if rows * cols > MAX_PIXELS:
        raise PreprocessError(f"cannot decode pixel data: {rows}x{cols} exceeds the size limit")


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Decode a dataset's pixel data, any decoder failure raised as ``PreprocessError``.

    Decoders raise many exception types, and the Rust (pyo3) ones such as
    pylibjpeg-rle raise ``PanicException`` on corrupt data, which derives from
    ``BaseException``: all of them mean "undecodable". Interpreter exits stay fatal.

    Parameters
    ----------
    ds : pydicom.Dataset

    Returns
    -------
    numpy.ndarray
        ``ds.pixel_array``.

    Raises
    ------
    PreprocessError
        When the pixel data cannot be decoded.
    """
    try:
        return ds.pixel_array
    except Exception as exc:  # every decoder error means "undecodable"
        raise PreprocessError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise PreprocessError(f"cannot decode pixel data: decoder panic: {exc}") from exc


def dataset_to_display_array(
    ds: pydicom.Dataset, *, voi: bool = False, pixels: np.ndarray | None = None
) -> tuple[np.ndarray, bool]:
    """Decode a DICOM image and apply its modality LUT (and optionally VOI LUT).

    Parameters
    ----------
    ds : pydicom.Dataset
        A single-frame grey image dataset.
    voi : bool
        Also apply the VOI LUT / window when the dataset carries one.
    pixels : numpy.ndarray, optional
        The frame's stored values, already decoded (at a reduced resolution:
        :func:`models.reduced_decode.decode_reduced`); default: decode ``ds``.

    Returns
    -------
    values : numpy.ndarray
        2-D float32 array.
    windowed : bool
        True when a VOI LUT or window was applied.

    Raises
    ------
    PreprocessError
        For missing, undecodable, colour or multi-frame pixel data.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        _check_geometry(ds)
    except (ValueError, TypeError, AttributeError) as exc:  # unparsable header values
        raise PreprocessError(f"cannot decode pixel data: bad image header: {exc}") from exc
    raw = decode_pixels(ds) if pixels is None else pixels
    if raw.ndim != 2:
        raise PreprocessError(f"not a single-frame grayscale image: decoded shape {raw.shape}")
    try:
        values = apply_modality_lut(raw, ds)
    except Exception as exc:
        raise PreprocessError(f"cannot apply the modality LUT: {exc}") from exc
    windowed = False
    if voi and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        try:
            windowed_values = apply_voi_lut(values, ds, index=0)
        except Exception as exc:  # noqa: BLE001 - malformed VOI attributes: use percentiles
            logger.warning("ignoring an unusable VOI LUT/window: %s", exc)
        else:
            if np.ptp(windowed_values) > 0:
                values, windowed = windowed_values, True
            else:
                logger.warning("VOI window gives a constant image; using percentiles instead")
    return np.asarray(values, dtype=np.float32), windowed


def preprocess_dataset(
    ds: pydicom.Dataset, spec: PreprocessSpec, *, pixels: np.ndarray | None = None
) -> np.ndarray:
    """Preprocess a DICOM dataset into the model input.

    Parameters
    ----------
    ds : pydicom.Dataset
        Single-frame grey (MONOCHROME1/2) image; compressed transfer syntaxes
        are decoded by the installed pydicom pixel-data plugins.
    spec : PreprocessSpec
        Preprocessing parameters (from the model card).
    pixels : numpy.ndarray, optional
        The frame's stored values, already decoded (see
        :func:`dataset_to_display_array`); default: decode ``ds``.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``spec.shape``.

    Raises
    ------
    PreprocessError
        If the pixel data is missing, undecodable, colour or multi-frame.
    """
    values, windowed = dataset_to_display_array(ds, voi=spec.window == "voi", pixels=pixels)
    return preprocess_array(values, spec, invert=_is_inverted(ds), windowed=windowed)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Convert a PIL image to a 2-D numeric array, refusing true colour.

    Raises
    ------
    PreprocessError
        For multi-frame images or colour images whose channels differ.
    """
    if getattr(img, "n_frames", 1) > 1:
        raise PreprocessError(f"not a single-frame grayscale image: {img.n_frames} frames")
    mode = img.mode
    if mode in ("L", "I", "F", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(img if mode != "1" else img.convert("L"))
    if mode in ("LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        if np.abs(rgb[..., 0] - rgb[..., 1]).max(initial=0) <= 2 and (
            np.abs(rgb[..., 0] - rgb[..., 2]).max(initial=0) <= 2
        ):
            return rgb.mean(axis=-1).astype(np.float32)
        raise PreprocessError(f"not a single-frame grayscale image: colour image (mode {mode})")
    raise PreprocessError(f"not a single-frame grayscale image: unsupported mode {mode}")


def preprocess_pil(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Preprocess a PNG/JPEG image (MONOCHROME2 semantics) into the model input.

    Parameters
    ----------
    img : PIL.Image.Image
        Grey image (8 or 16 bit); an RGB image whose channels are equal is
        accepted as grey.
    spec : PreprocessSpec
        Preprocessing parameters.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``spec.shape``.

    Raises
    ------
    PreprocessError
        For colour or multi-frame images.
    """
    return preprocess_array(pil_to_array(img), spec)


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def preprocess_file(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Preprocess a DICOM, PNG or JPEG file, chosen by content and suffix.

    Parameters
    ----------
    path : str or pathlib.Path
        The image file.
    spec : PreprocessSpec
        Preprocessing parameters.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``spec.shape``.

    Raises
    ------
    PreprocessError
        If the file cannot be read or decoded.
    """
    path = Path(path)
    if _looks_like_dicom(path):
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise PreprocessError(f"cannot read DICOM file {path.name}: {exc}") from exc
        return preprocess_dataset(ds, spec)
    try:
        with Image.open(path) as img:
            img.load()
            return preprocess_pil(img, spec)
    except PreprocessError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for non-images
        pil_error = exc
    # Not an image Pillow knows: maybe DICOM without preamble / File Meta.
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - neither an image nor DICOM: reported below
        ds = None
    if ds is not None and "PixelData" in ds:
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian
                if ds.is_implicit_VR in (True, None)
                else pydicom.uid.ExplicitVRLittleEndian
            )
        return preprocess_dataset(ds, spec)
    raise PreprocessError(f"cannot decode image file {path.name}: {pil_error}")
