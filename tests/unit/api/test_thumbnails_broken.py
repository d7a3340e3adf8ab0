"""A thumbnail of a broken image is a clear error, never a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from worklist.thumbnails import ThumbnailError, render_thumbnail


def _corrupt_rle(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()
    ds.compress(RLELossless)
    ds.PixelData = ds.PixelData[:40] + b"\xff" * 200  # a damaged RLE stream
    ds.save_as(path, enforce_file_format=True)
    return path


def test_corrupt_rle_is_a_thumbnail_error(tmp_path: Path) -> None:
    path = _corrupt_rle(tmp_path / "bad.dcm")
    with pytest.raises(ThumbnailError, match="cannot decode pixels"):
        render_thumbnail(path)


def test_missing_file_is_a_thumbnail_error(tmp_path: Path) -> None:
    with pytest.raises(ThumbnailError, match="cannot read the file"):
        render_thumbnail(tmp_path / "gone.dcm")
