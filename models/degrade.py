"""Deterministic degradations of an image, to test what a hospital may send.

Used by ``triage-model evaluate --variants`` to score the same images after
JPEG recompression, lower resolution, or a trip through a MONOCHROME1
DICOM (12-bit, rescale slope/intercept, optionally JPEG 2000). numpy, Pillow
and pydicom only.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.preprocess import PreprocessSpec, preprocess_dataset, preprocess_pil

__all__ = [
    "VARIANTS",
    "VARIANT_DESCRIPTIONS",
    "apply_variant",
    "down_up",
    "jpeg_recompress",
    "make_dicom",
]

#: Secondary Capture Image Storage, used only for in-memory test datasets.
_SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    bits_stored: int | None = None,
    modality: str = "CR",
) -> Dataset:
    """Wrap a 2-D unsigned integer array as a single-frame grey DICOM dataset.

    Parameters
    ----------
    pixels : numpy.ndarray
        Stored values (uint8 or uint16), already inverted for MONOCHROME1.
    photometric : str
        ``MONOCHROME1`` or ``MONOCHROME2``.
    slope, intercept : float
        Rescale Slope / Rescale Intercept written to the header.
    bits_stored : int, optional
        Defaults to the dtype's bit depth.
    modality : str
        Modality attribute.

    Returns
    -------
    pydicom.Dataset
        Explicit VR Little Endian, uncompressed, with File Meta.
    """
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError("pixels must be a 2-D uint8 or uint16 array")
    bits = 8 if pixels.dtype == np.uint8 else 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SC_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _SC_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.PixelData = pixels.tobytes()
    return ds


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def jpeg_recompress(img: Image.Image, quality: int) -> Image.Image:
    """Encode as JPEG at ``quality`` and decode again."""
    buf = io.BytesIO()
    img.convert("L").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def down_up(img: Image.Image, side: int) -> Image.Image:
    """Shrink so the longer side is ``side`` pixels, then enlarge back (bilinear)."""
    w, h = img.size
    scale = side / max(w, h)
    small = img.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
    )
    return small.resize((w, h), Image.Resampling.BILINEAR)


def _mono1_dataset(img: Image.Image) -> Dataset:
    """12-bit MONOCHROME1 with rescale: what a CR reader might send."""
    v = np.asarray(img.convert("L"), dtype=np.float64)
    stored = np.clip(np.round(4095.0 - v * (4095.0 / 255.0)), 0, 4095).astype(np.uint16)
    return make_dicom(
        stored, photometric="MONOCHROME1", slope=0.5, intercept=-1024.0, bits_stored=12
    )


def _v_original(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    return preprocess_pil(img, spec)


def _v_jpeg30_96(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    return preprocess_pil(jpeg_recompress(down_up(img.convert("L"), 96), 30), spec)


def _v_lowres64(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    return preprocess_pil(down_up(img.convert("L"), 64), spec)


def _v_jpeg15(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    return preprocess_pil(jpeg_recompress(img, 15), spec)


def _v_mono1_dicom(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    return preprocess_dataset(_roundtrip(_mono1_dataset(img)), spec)


def _v_j2k_mono1_dicom(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    from pydicom.uid import JPEG2000

    ds = _mono1_dataset(img)
    # lossy JPEG 2000 at a 20:1 compression ratio, as some archives store
    ds.compress(JPEG2000, j2k_cr=[20], use_mct=False)
    return preprocess_dataset(_roundtrip(ds), spec)


def _v_histeq(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    from PIL import ImageOps

    return preprocess_pil(ImageOps.equalize(img.convert("L")), spec)


VARIANTS: dict[str, Callable[[Image.Image, PreprocessSpec], np.ndarray]] = {
    "original": _v_original,
    "jpeg30_96px": _v_jpeg30_96,
    "lowres64": _v_lowres64,
    "jpeg15": _v_jpeg15,
    "mono1_dicom": _v_mono1_dicom,
    "j2k_mono1_dicom": _v_j2k_mono1_dicom,
    "histeq": _v_histeq,
}

VARIANT_DESCRIPTIONS: dict[str, str] = {
    "original": "the images as stored",
    "jpeg30_96px": "shrunk to 96 px (longer side), enlarged back, JPEG quality 30",
    "lowres64": "shrunk to 64 px (longer side) and enlarged back",
    "jpeg15": "JPEG recompression at quality 15",
    "mono1_dicom": "12-bit MONOCHROME1 DICOM with rescale slope 0.5 / intercept -1024",
    "j2k_mono1_dicom": "as mono1_dicom, JPEG 2000 lossy at 20:1",
    "histeq": "histogram-equalised (exposure and the intensity histogram no longer tell the label)",
}


def apply_variant(name: str, img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Preprocessed model input of ``img`` after the degradation ``name``."""
    try:
        fn = VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}") from None
    return fn(img, spec)
