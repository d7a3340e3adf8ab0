"""A preview of a broken image is a clear error, never a crash; previews are stored
files named by the instance's database id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from triage.guarded_decode import decode_image
from worklist.thumbnails import ThumbnailError, png_from_dataset, store_thumbnail, thumbnail_path


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
        png_from_dataset(pydicom.dcmread(path))
    made = decode_image(str(path), None, max_pixels=10**6)
    assert made.png is None and made.tensor is None
    assert made.error is not None and made.error.startswith("cannot decode pixel data")


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    made = decode_image(str(tmp_path / "gone.dcm"), None, max_pixels=10**6)
    assert made.error is not None and "FileNotFoundError" in made.error


def test_previews_are_stored_by_instance_id(tmp_path: Path) -> None:
    stored = store_thumbnail(tmp_path, 42, b"\x89PNG-data")
    assert stored == thumbnail_path(tmp_path, 42) == tmp_path / "thumbnails" / "42.png"
    assert stored.read_bytes() == b"\x89PNG-data"
    assert [p.name for p in stored.parent.iterdir()] == ["42.png"]
