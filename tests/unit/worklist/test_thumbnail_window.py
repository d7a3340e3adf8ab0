"""Previews apply the header's window, unless the image does not fall in it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from worklist.thumbnails import png_from_dataset


def _grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


def _dx(pixels: np.ndarray, *, center: float, width: float) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def test_the_header_window_is_applied() -> None:
    ramp = np.tile(np.linspace(0, 4000, 200), (100, 1))
    grey = _grey(png_from_dataset(_dx(ramp, center=1000, width=400)))
    # everything above 1200 is white, below 800 black: most of the ramp saturates
    assert (grey >= 254).mean() > 0.6
    assert (grey <= 1).mean() > 0.15


def test_a_window_outside_the_stored_values_is_ignored() -> None:
    """A window the image does not fall in (a wrong header) would make the preview one
    flat grey; the values' own spread is shown instead."""
    ramp = np.tile(np.linspace(32744, 65535, 200), (100, 1))
    grey = _grey(png_from_dataset(_dx(ramp, center=2725, width=5310)))
    assert grey.std() > 60
    assert grey[:, :10].mean() < 20 and grey[:, -10:].mean() > 235


def test_the_real_proscan_chest_is_not_blank(shared_data: Path) -> None:
    """Its window 2725/5310 lies outside its stored values 32744-65535 (shared data
    README): the preview shows the image, not a white square."""
    ds = pydicom.dcmread(shared_data / "dicom" / "real" / "proscan_DX_chest_J2K_16bit.dcm")
    grey = _grey(png_from_dataset(ds))
    assert grey.std() > 40, grey.std()
