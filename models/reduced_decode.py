"""Decoding a compressed frame at a reduced resolution, when no more is needed.

A JPEG 2000 codestream stores its image as wavelet resolution levels, and a JPEG
baseline image can be decoded with scaled inverse DCTs: either gives the image at
1/2, 1/4 or 1/8 of its size for a fraction of the full decode (the 1955x1841 JPEG
2000 chest CR of the benchmarks: 27 ms at 1/4 against 140 ms in full; the 2446x2010
JPEG baseline CR: 10 ms against 76 ms; idle, ``bench/TRIAGE.md``). The model input
(128 px) and the preview (256 px) need far less than a 2k radiograph, so the decode
child makes both from such an image when its shorter side keeps at least
:func:`needed_side` pixels. The model's probability stays within 0.02 of the one
from the full decode on every real file of the shared data
(``tests/unit/models/test_reduced_decode.py``).

The values are the stored pixel values, as the full decode gives them (Pillow
scales JPEG 2000 samples up to 16 bits; they are scaled back), at the lower
resolution. Anything else (other transfer syntaxes, signed or colour or multi-frame
data, a level the codestream does not have, any decoder error) returns None, and
the caller decodes in full, where a broken frame gets its recorded reason.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageFile, Jpeg2KImagePlugin
from pydicom.dataset import Dataset

from models.frame_headers import first_frame, parse_j2k, parse_jpeg

__all__ = ["decode_reduced", "needed_side", "reduction"]

log = logging.getLogger(__name__)

#: JPEG 2000 (lossless only, and lossless or lossy) and JPEG baseline (8-bit).
J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: Most halvings tried: JPEG scales to 1/8 at most; JPEG 2000 files usually have
#: 5 wavelet levels (a level the file lacks makes the decode fail: full decode).
MAX_REDUCTION = {"jpeg": 3, "jpeg2000": 5}


def needed_side(input_size: int | None, preview_size: int) -> int:
    """Shortest side the decoded image must keep for the model input and the preview.

    Twice the model input (the resize then still averages at least 2x2 pixels into
    one), and the preview's size.

    Parameters
    ----------
    input_size : int or None
        The model's input size; None when only a preview is made.
    preview_size : int
        Longest side of the preview.

    Returns
    -------
    int
    """
    return max(2 * input_size if input_size else 0, preview_size)


def reduction(rows: int, columns: int, min_side: int, most: int) -> int:
    """How many times the image can be halved keeping its shorter side >= ``min_side``.

    Parameters
    ----------
    rows, columns : int
    min_side : int
    most : int
        Upper bound (what the codec offers).

    Returns
    -------
    int
        0 to ``most``; each halving rounds up, as the decoders do.
    """
    shorter, levels = min(rows, columns), 0
    while levels < most and -(-shorter // (2 << levels)) >= min_side:
        levels += 1
    return levels


class _Jpeg2K(Jpeg2KImagePlugin.Jpeg2KImageFile):
    """Pillow's JPEG 2000 image file, with OpenJPEG's size at a reduced level.

    OpenJPEG rounds a reduced side up (1841 at 1/4 is 461); Pillow (up to 13.0 at
    least) rounds it to the nearest, makes an image one pixel too small and fails the
    decode ("broken data stream"). This :meth:`load` sizes the image as OpenJPEG does.
    """

    def load(self) -> Image.core.PixelAccess | None:
        if self.tile and self._reduce:
            power = 1 << self._reduce
            self._size = (-(-self.size[0] // power), -(-self.size[1] // power))
            tile = self.tile[0]
            codec, _reduce, _layers, fd, length = tile.args
            self.tile = [
                ImageFile._Tile(
                    tile.codec_name,
                    (0, 0, *self.size),
                    tile.offset,
                    (codec, self._reduce, self.layers, fd, length),
                )
            ]
        return ImageFile.ImageFile.load(self)


def _decode_j2k(frame: bytes, levels: int) -> np.ndarray | None:
    header = parse_j2k(frame)
    if header.components != 1 or header.signed or header.precision > 16:
        return None
    image = _Jpeg2K(io.BytesIO(frame))
    image.reduce = levels
    image.load()
    if image.mode == "L":
        return np.asarray(image)
    if image.mode != "I;16":
        return None
    # Pillow scales samples of fewer than 16 bits up to 16 (a left shift): undo it.
    return np.asarray(image, dtype=np.uint16) >> (16 - header.precision)


def _decode_jpeg(frame: bytes, levels: int, rows: int, columns: int) -> np.ndarray | None:
    header = parse_jpeg(frame)
    if header.codec != "jpeg" or header.components != 1 or header.precision != 8:
        return None
    image = Image.open(io.BytesIO(frame), formats=["JPEG"])
    if image.mode != "L":
        return None
    # draft picks the largest DCT scale that keeps at least the requested size.
    image.draft("L", (columns >> levels, rows >> levels))
    image.load()
    return np.asarray(image)


def decode_reduced(ds: Dataset, *, min_side: int) -> np.ndarray | None:
    """The first frame's stored values at a reduced resolution, or None (decode in full).

    Call it where pixel data may be decoded (the worker's guarded decode child), after
    :func:`models.frame_headers.check_frame`.

    Parameters
    ----------
    ds : pydicom.Dataset
        A single-frame, one-sample image with its file meta and Pixel Data.
    min_side : int
        The decoded image's shorter side stays at least this long
        (:func:`needed_side`).

    Returns
    -------
    numpy.ndarray or None
        2-D array of ``ceil(Rows / 2**k)`` x ``ceil(Columns / 2**k)`` for some
        ``k >= 1``; None when no reduced decode applies or it failed.

    Raises
    ------
    MemoryError
        When the decode needs more memory than the process may use.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in J2K_SYNTAXES:
        codec = "jpeg2000"
    elif syntax == JPEG_BASELINE:
        codec = "jpeg"
    else:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        if (
            int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1
            or int(ds.get("PixelRepresentation", 0) or 0) != 0
        ):
            return None
    except (AttributeError, TypeError, ValueError):
        return None
    levels = reduction(rows, columns, min_side, MAX_REDUCTION[codec])
    if levels == 0:
        return None
    try:
        frame = first_frame(ds)
        if codec == "jpeg2000":
            pixels = _decode_j2k(frame, levels)
        else:
            pixels = _decode_jpeg(frame, levels, rows, columns)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here: the full decode decides
        log.debug("no reduced decode (%s: %s); decoding in full", type(exc).__name__, exc)
        return None
    expected = (-(-rows // (1 << levels)), -(-columns // (1 << levels)))
    if pixels is None or pixels.shape != expected:
        return None
    return pixels
