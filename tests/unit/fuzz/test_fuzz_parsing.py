"""Bounded fuzzing (hypothesis, derandomised so CI is reproducible) of the two
parsing paths a hostile or broken sender reaches:

- ingest: :func:`dicom_scp.headers.check_complete`, :func:`read_header` and
  :func:`instance_info_from_dataset`, as :class:`dicom_scp.sink.SpoolSink` calls
  them, may only raise :class:`dicom_scp.status.StoreError` (a named DICOM failure
  status), never anything else;
- worker: reading, selecting and preprocessing an instance
  (:mod:`triage.pipeline`) never raises, and gives either an eligible image with a
  finite tensor of the model's shape or a skip with a reason.

Inputs are mutations (bit flips, truncation, inserted bytes, absurd lengths) of
small valid instances (uncompressed 16-bit, RLE, JPEG-LS, JPEG 2000 where an
encoder is installed),
and header fields drawn at random (dimensions, bits, samples, photometric
interpretation, frames, pixel data length).
"""

from __future__ import annotations

import contextlib
import functools
import struct
import tempfile
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicom_scp.headers import check_complete, instance_info_from_dataset, read_header
from dicom_scp.status import StoreError
from models.preprocess import PreprocessSpec
from triage.pipeline import _preprocess, _read
from triage.selection import Eligible, Skipped

CR = "1.2.840.10008.5.1.4.1.1.1"
SPEC = PreprocessSpec(input_size=32, channels=1)

FUZZ = settings(
    max_examples=300,
    deadline=None,  # decoders vary; a hang is caught by pytest-timeout
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _chest(rows: int = 24, cols: int = 20, bits: int = 16) -> Dataset:
    rng = np.random.default_rng(0)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Fuzz^Patient"
    ds.PatientID = "FUZZ-1"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    dtype = np.uint16 if bits == 16 else np.uint8
    pixels = rng.integers(0, 2**ds.BitsStored, size=(rows, cols), dtype=dtype)
    ds.PixelData = pixels.tobytes()
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _seed(syntax: str) -> bytes | None:
    """A small valid instance in ``syntax``; None when no encoder here can make it."""
    ds = _chest(32, 32)
    if syntax == "jpeg":
        from pydicom.uid import JPEGBaseline8Bit

        ds.BitsStored, ds.HighBit = 8, 7
        ds.PixelData = np.full((ds.Rows, ds.Columns), 128, np.uint8).tobytes()
        try:
            ds.compress(JPEGBaseline8Bit, encoding_plugin="pylibjpeg")
        except Exception:  # noqa: BLE001 - no JPEG encoder here: use RLE instead
            ds.compress(RLELossless)
    elif syntax != "explicit":
        target = {"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}[syntax]
        try:
            ds.compress(target)
        except RuntimeError:  # no encoder plugin for it here
            return None
    return _encode(ds)


@functools.cache
def seeds() -> dict[str, bytes]:
    """The seed instances (built once, on first use)."""
    made = {name: _seed(name) for name in ("explicit", "rle", "jpegls", "j2k")}
    return {name: data for name, data in made.items() if data is not None}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, str]:
    """A seed instance with a few random mutations; returns (bytes, transfer syntax)."""
    name = draw(st.sampled_from(sorted(seeds())))
    data = bytearray(seeds()[name])
    syntax = str(read_header(bytes(data)).file_meta.TransferSyntaxUID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "length", "zero"]))
        if len(data) <= 133:
            break
        pos = draw(st.integers(132, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "length":  # an absurd 16- or 32-bit length field
            value = draw(st.sampled_from([0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 0, 1, 3]))
            packed = struct.pack("<I", value)
            data[pos : pos + 4] = packed
        else:
            data[pos : pos + 8] = b"\0" * 8
    return bytes(data), syntax


def _ingest_parse(data: bytes, syntax: str) -> None:
    """What SpoolSink._store does before touching the disk."""
    check_complete(data, syntax)
    header = read_header(data)
    instance_info_from_dataset(
        header,
        sop_class_uid=CR,
        sop_instance_uid=str(header.get("SOPInstanceUID", "")),
        transfer_syntax_uid=syntax,
        file_path="",
        size_bytes=len(data),
    )


@FUZZ
@given(mutated())
def test_ingest_parsing_raises_only_store_errors(case: tuple[bytes, str]) -> None:
    data, syntax = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(StoreError):
            _ingest_parse(data, syntax)


def _worker_path(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "instance.dcm"
        path.write_bytes(data)
        image = _read(1, "1.2.3", str(path))
        if isinstance(image.selection, Eligible):
            _preprocess(image, SPEC)
    assert isinstance(image.selection, Eligible | Skipped)
    if isinstance(image.selection, Eligible):
        assert image.tensor is not None
        assert image.tensor.shape == (1, SPEC.input_size, SPEC.input_size)
        assert np.isfinite(image.tensor).all()
    else:
        assert image.selection.reason


@FUZZ
@given(mutated())
def test_worker_read_and_preprocess_never_raise(case: tuple[bytes, str]) -> None:
    _worker_path(case[0])


@st.composite
def odd_headers(draw: st.DrawFn) -> bytes:
    """A well-formed file whose image description lies or is absurd."""
    ds = _chest()
    ds.Rows = draw(st.sampled_from([0, 1, 2, 24, 4096, 65535]))
    ds.Columns = draw(st.sampled_from([0, 1, 20, 8192, 65535]))
    ds.BitsAllocated = draw(st.sampled_from([1, 8, 12, 16, 32, 64]))
    ds.BitsStored = draw(st.integers(0, 40))
    ds.HighBit = draw(st.integers(0, 40))
    ds.PixelRepresentation = draw(st.integers(0, 2))
    ds.SamplesPerPixel = draw(st.sampled_from([0, 1, 3, 4]))
    ds.PhotometricInterpretation = draw(
        st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", ""])
    )
    if draw(st.booleans()):
        ds.NumberOfFrames = draw(st.sampled_from(["0", "1", "2", "100000", "-1"]))
    if draw(st.booleans()):
        ds.PlanarConfiguration = draw(st.integers(0, 2))
    if draw(st.booleans()):
        ds.RescaleSlope = draw(st.sampled_from(["0", "1e308", "-1", "nan"]))
        ds.RescaleIntercept = draw(st.sampled_from(["0", "-1e308", "inf"]))
    if draw(st.booleans()):
        ds.WindowCenter = draw(st.sampled_from(["0", "1e300", "nan"]))
        ds.WindowWidth = draw(st.sampled_from(["0", "-5", "1e300"]))
    ds.PixelData = draw(st.binary(min_size=0, max_size=4096))
    return _encode(ds)


@FUZZ
@given(odd_headers())
def test_worker_survives_lying_image_descriptions(data: bytes) -> None:
    _worker_path(data)


@FUZZ
@given(odd_headers())
def test_ingest_survives_lying_image_descriptions(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(StoreError):
            _ingest_parse(data, ExplicitVRLittleEndian)


def test_rust_decoder_panic_is_a_skip_not_a_crash() -> None:
    """Found by the reliability suite: random bytes in RLE segments make the Rust
    decoder (pylibjpeg-rle) panic with pyo3's ``PanicException``, a
    ``BaseException`` that ``except Exception`` let through and that killed the task.
    It is a recorded reason now."""
    ds = _chest(64, 64)
    ds.compress(RLELossless)
    data = bytearray(_encode(ds))
    start = len(data) - (len(ds.PixelData) - 100)
    noise = np.random.default_rng(1).integers(0, 256, len(data) - 16 - start, np.uint8)
    data[start : len(data) - 16] = noise.tobytes()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "rle.dcm"
        path.write_bytes(bytes(data))
        image = _read(1, "1.2.3", str(path))
        assert isinstance(image.selection, Eligible)
        _preprocess(image, SPEC)
    assert isinstance(image.selection, Skipped)
    assert image.selection.code.value == "cannot_decode"
