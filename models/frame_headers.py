"""The dimensions a compressed frame declares, read from its own bytes before any decode.

A decoder sizes its buffers from the frame's header (JPEG SOF, JPEG-LS SOF55,
JPEG 2000 SIZ, RLE segment table), not from the DICOM Rows/Columns. A file that says
512x512 in its DICOM header while its JPEG SOF says 64000x64000 makes the decoder
allocate gigabytes. :func:`check_frame` reads the frame's header (a few bytes, pure
Python) and refuses a frame whose dimensions differ from the dataset's or exceed a
pixel budget, so that no decoder ever sees it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.dataset import Dataset

__all__ = [
    "FrameHeader",
    "FrameHeaderError",
    "check_frame",
    "first_frame",
    "parse_j2k",
    "parse_jpeg",
    "parse_rle",
]

#: JPEG start-of-frame markers (all processes); 0xC4 DHT, 0xC8 JPG, 0xCC DAC are not SOFs.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOF55 = 0xF7  # JPEG-LS (ISO 14495-1)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length
_SOS, _EOI = 0xDA, 0xD9

JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # baseline
        "1.2.840.10008.1.2.4.51",  # extended
        "1.2.840.10008.1.2.4.57",  # lossless
        "1.2.840.10008.1.2.4.70",  # lossless SV1
    }
)
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
RLE_SYNTAX = "1.2.840.10008.1.2.5"


class FrameHeaderError(ValueError):
    """A frame whose own header is missing, malformed, or disagrees with the dataset."""


@dataclass(frozen=True)
class FrameHeader:
    """What a compressed frame says about itself.

    Attributes
    ----------
    codec : str
        ``jpeg``, ``jpeg-ls``, ``jpeg2000`` or ``rle``.
    rows, columns : int
        Height and width (RLE: None, the segments carry no size).
    components : int
        Samples per pixel (RLE: segments / bytes per sample, see :func:`parse_rle`).
    precision : int
        Bits per sample (RLE: 0, not stated).
    signed : bool
        Samples are signed (JPEG 2000 only; JPEG and RLE do not say).
    """

    codec: str
    rows: int | None
    columns: int | None
    components: int
    precision: int
    signed: bool = False


def parse_jpeg(data: bytes) -> FrameHeader:
    """Read the SOF (or JPEG-LS SOF55) segment of a JPEG stream.

    Parameters
    ----------
    data : bytes
        The frame, starting with SOI (FFD8).

    Returns
    -------
    FrameHeader

    Raises
    ------
    FrameHeaderError
        No SOI, a truncated or malformed segment, scan data before any SOF, or a
        height of 0 (defined later by a DNL marker, which is refused).
    """
    if data[:2] != b"\xff\xd8":
        raise FrameHeaderError("JPEG frame does not start with SOI")
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise FrameHeaderError(f"JPEG frame: no marker at byte {pos}")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (_SOS, _EOI):
            raise FrameHeaderError("JPEG frame has no frame header (SOF) before its scan")
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > end:
            break
        if marker in _SOF or marker == _SOF55:
            if length < 8:
                raise FrameHeaderError("JPEG frame header (SOF) is too short")
            precision, rows, columns, components = struct.unpack(">BHHB", data[pos + 2 : pos + 8])
            if rows == 0:
                raise FrameHeaderError("JPEG frame height 0 (set later by DNL) is not supported")
            codec = "jpeg-ls" if marker == _SOF55 else "jpeg"
            return FrameHeader(codec, rows, columns, components, precision)
        pos += length
    raise FrameHeaderError("JPEG frame is truncated before its frame header (SOF)")


def _j2k_codestream(data: bytes) -> bytes:
    """The codestream of a raw J2K stream or of a JP2 file (its ``jp2c`` box)."""
    if data[:2] == b"\xff\x4f":
        return data
    pos = 0
    while pos + 8 <= len(data):
        length, box = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if length == 1:
            if pos + 16 > len(data):
                break
            (length,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        if box == b"jp2c":
            return data[pos + header :]
        if length < header:
            break
        pos += length
    raise FrameHeaderError("JPEG 2000 frame has neither a codestream (SOC) nor a jp2c box")


def parse_j2k(data: bytes) -> FrameHeader:
    """Read the SIZ segment of a JPEG 2000 frame (codestream or JP2 file).

    Parameters
    ----------
    data : bytes

    Returns
    -------
    FrameHeader
        ``precision`` is the largest component bit depth; ``signed`` when any
        component is signed.

    Raises
    ------
    FrameHeaderError
        No SOC/SIZ, a truncated SIZ, or an image area that is not positive.
    """
    stream = _j2k_codestream(data)
    if stream[:4] != b"\xff\x4f\xff\x51":
        raise FrameHeaderError("JPEG 2000 codestream does not start with SOC, SIZ")
    if len(stream) < 4 + 38:
        raise FrameHeaderError("JPEG 2000 SIZ segment is truncated")
    (lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, *_tiles, csiz) = struct.unpack(
        ">HHIIIIIIIIH", stream[4 : 4 + 38]
    )
    if csiz < 1 or len(stream) < 4 + 38 + 3 * csiz or lsiz != 38 + 3 * csiz:
        raise FrameHeaderError("JPEG 2000 SIZ segment is truncated or malformed")
    width, height = xsiz - xosiz, ysiz - yosiz
    if width <= 0 or height <= 0:
        raise FrameHeaderError(f"JPEG 2000 image area is {width}x{height}")
    ssiz = [stream[42 + 3 * i] for i in range(csiz)]
    depths = [(s & 0x7F) + 1 for s in ssiz]
    return FrameHeader("jpeg2000", height, width, csiz, max(depths), any(s & 0x80 for s in ssiz))


def parse_rle(data: bytes) -> FrameHeader:
    """Read the segment table of a DICOM RLE frame (PS3.5 annex G).

    Parameters
    ----------
    data : bytes
        The whole frame.

    Returns
    -------
    FrameHeader
        ``components`` holds the number of segments; rows and columns are None.

    Raises
    ------
    FrameHeaderError
        A truncated header, 0 or more than 15 segments, or offsets that do not start
        at 64, do not increase, or point past the frame.
    """
    if len(data) < 64:
        raise FrameHeaderError("RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack("<16I", data[:64])
    if not 1 <= count <= 15:
        raise FrameHeaderError(f"RLE frame declares {count} segments (1 to 15 allowed)")
    used = offsets[:count]
    if used[0] != 64:
        raise FrameHeaderError("RLE frame: the first segment does not start at byte 64")
    if any(b <= a for a, b in zip(used, used[1:], strict=False)) or used[-1] >= len(data):
        raise FrameHeaderError("RLE frame: segment offsets do not increase within the frame")
    return FrameHeader("rle", None, None, count, 0)


def first_frame(ds: Dataset) -> bytes:
    """The bytes of the first frame of an encapsulated Pixel Data.

    Parameters
    ----------
    ds : pydicom.Dataset

    Returns
    -------
    bytes

    Raises
    ------
    FrameHeaderError
        When the encapsulation cannot be parsed.
    """
    from pydicom.encaps import generate_frames

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=frames))
    except (StopIteration, ValueError, TypeError, KeyError) as exc:
        raise FrameHeaderError(
            f"encapsulated pixel data cannot be split into frames: {exc}"
        ) from exc


def check_frame(ds: Dataset, *, max_pixels: int) -> FrameHeader | None:
    """Refuse a compressed frame whose own header disagrees with the dataset or is too big.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image dataset with its file meta (transfer syntax) and Pixel Data.
    max_pixels : int
        Largest Rows x Columns accepted for one frame.

    Returns
    -------
    FrameHeader or None
        None for native (uncompressed or deflated) pixel data, whose size pydicom
        checks against Rows, Columns and Bits Allocated itself.

    Raises
    ------
    FrameHeaderError
        With a readable reason, before any decoder has run.
    """
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if rows * columns > max_pixels:
        raise FrameHeaderError(
            f"image of {rows}x{columns} pixels exceeds the limit of {max_pixels} pixels"
        )
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in JPEG_SYNTAXES or syntax in JPEG_LS_SYNTAXES:
        header = parse_jpeg(first_frame(ds))
    elif syntax in J2K_SYNTAXES:
        header = parse_j2k(first_frame(ds))
    elif syntax == RLE_SYNTAX:
        header = parse_rle(first_frame(ds))
        expected = samples * max(1, (bits + 7) // 8)
        if header.components != expected:
            raise FrameHeaderError(
                f"RLE frame has {header.components} segments; {samples} sample(s) of "
                f"{bits} bits need {expected}"
            )
        return header
    else:
        return None
    if header.rows is not None and (header.rows, header.columns) != (rows, columns):
        raise FrameHeaderError(
            f"{header.codec} frame is {header.rows}x{header.columns} pixels but the "
            f"dataset says Rows={rows}, Columns={columns}"
        )
    if header.components != samples:
        raise FrameHeaderError(
            f"{header.codec} frame has {header.components} component(s) but the dataset "
            f"says SamplesPerPixel={samples}"
        )
    if bits and header.precision > bits:
        raise FrameHeaderError(
            f"{header.codec} frame has {header.precision}-bit samples but the dataset "
            f"says BitsAllocated={bits}"
        )
    return header
