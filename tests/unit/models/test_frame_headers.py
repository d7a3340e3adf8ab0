"""Frame headers read before any decode (issue 13, point 3): crafted bytes for every
codec, and the real files in ../shared/data/dicom."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate

from models.frame_headers import (
    FrameHeaderError,
    check_frame,
    parse_j2k,
    parse_jpeg,
    parse_rle,
)
from tests.integration.hostile.attacks import jpeg_bomb

BUDGET = 30_000_000


def _siz(width: int, height: int, comps: int = 1, depth: int = 12, x0: int = 0) -> bytes:
    body = struct.pack(">HIIIIIIII", 0, width, height, x0, 0, width, height, 0, 0)
    body += struct.pack(">H", comps) + bytes([depth - 1, 1, 1]) * comps
    return b"\xff\x4f\xff\x51" + struct.pack(">H", len(body) + 2) + body


def test_jpeg_sof_is_read_past_app_segments_and_fill_bytes() -> None:
    data = jpeg_bomb(64000, 64000)
    with_app = data[:2] + b"\xff\xe0\x00\x06JFIF" + b"\xff\xff" + data[2:]
    for stream in (data, with_app):
        header = parse_jpeg(stream)
        assert (header.codec, header.rows, header.columns) == ("jpeg", 64000, 64000)
        assert (header.components, header.precision) == (1, 8)


def test_jpeg_ls_sof55() -> None:
    sof55 = b"\xff\xd8\xff\xf7\x00\x0b" + struct.pack(">BHHBBBB", 16, 300, 200, 1, 1, 0x11, 0)
    header = parse_jpeg(sof55 + b"\xff\xda")
    assert (header.codec, header.rows, header.columns, header.precision) == (
        "jpeg-ls", 300, 200, 16,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x00\x00", "SOI"),
        (b"\xff\xd8\xff\xda\x00\x08", "before its scan"),
        (b"\xff\xd8\xff\xe0\x00\xff", "truncated"),
        (b"\xff\xd8\xff\xc0\x00\x0b" + struct.pack(">BHHBBBB", 8, 0, 64, 1, 1, 0x11, 0), "DNL"),
    ],
)
def test_malformed_jpeg_is_refused(stream: bytes, message: str) -> None:
    with pytest.raises(FrameHeaderError, match=message):
        parse_jpeg(stream)


def test_j2k_siz_in_a_codestream_and_in_a_jp2_box() -> None:
    raw = _siz(2000, 2128, depth=12, x0=0)
    assert parse_j2k(raw).rows == 2128 and parse_j2k(raw).columns == 2000
    jp2 = struct.pack(">I4s", 12, b"jP  ") + b"\r\n\x87\n"
    jp2 += struct.pack(">I4s", 8 + len(raw), b"jp2c") + raw
    header = parse_j2k(jp2)
    assert (header.codec, header.rows, header.columns, header.precision) == (
        "jpeg2000", 2128, 2000, 12,
    )  # fmt: skip
    with pytest.raises(FrameHeaderError, match="truncated"):
        parse_j2k(raw[:30])
    with pytest.raises(FrameHeaderError, match="area"):
        parse_j2k(_siz(10, 10, x0=20))


def test_rle_segment_table() -> None:
    frame = struct.pack("<16I", 2, 64, 100, *[0] * 13) + bytes(100)
    assert parse_rle(frame).components == 2
    for bad, message in (
        (struct.pack("<16I", 0, *[0] * 15) + bytes(10), "0 segments"),
        (struct.pack("<16I", 16, *[0] * 15) + bytes(10), "16 segments"),
        (struct.pack("<16I", 2, 64, 64, *[0] * 13) + bytes(10), "increase"),
        (struct.pack("<16I", 1, 80, *[0] * 14) + bytes(100), "byte 64"),
        (struct.pack("<16I", 2, 64, 9999, *[0] * 13) + bytes(10), "increase"),
        (b"\x01\x00", "64-byte"),
    ):
        with pytest.raises(FrameHeaderError, match=message):
            parse_rle(bad)


def _dx(shared_data: Path, frame: bytes, rows: int = 512, columns: int = 512) -> pydicom.Dataset:
    ds = pydicom.dcmread(shared_data / "dicom" / "real" / "konica_CR_chest_Monochrome1-Jpeg.dcm")
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate([frame])
    return ds


def test_the_64000_pixel_bomb_is_refused_before_decoding(shared_data: Path) -> None:
    ds = _dx(shared_data, jpeg_bomb(64000, 64000))
    with pytest.raises(FrameHeaderError, match=r"64000x64000 .* Rows=512, Columns=512"):
        check_frame(ds, max_pixels=BUDGET)
    honest = _dx(shared_data, jpeg_bomb(512, 512))
    assert check_frame(honest, max_pixels=BUDGET).rows == 512
    with pytest.raises(FrameHeaderError, match="exceeds the limit"):
        check_frame(_dx(shared_data, jpeg_bomb(6000, 6000), 6000, 6000), max_pixels=BUDGET)
    with pytest.raises(FrameHeaderError, match="component"):
        check_frame(
            _dx(
                shared_data,
                jpeg_bomb(512, 512).replace(
                    b"\x08\x02\x00\x02\x00\x01", b"\x08\x02\x00\x02\x00\x03"
                ),
            ),
            max_pixels=BUDGET,
        )


def test_every_real_image_passes(shared_data: Path) -> None:
    """The real chest files of every codec pass the check unchanged."""
    checked = {}
    for path in sorted((shared_data / "dicom" / "real").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        header = check_frame(ds, max_pixels=BUDGET)
        checked[path.name] = header.codec if header else "native"
    assert {"jpeg", "jpeg-ls", "jpeg2000", "rle", "native"} <= set(checked.values()), checked
