"""Crafted hostile inputs and the memory watch of the hostile suite.

- :func:`jpeg_bomb`: a valid baseline JPEG of any declared size whose every 8x8 block
  costs two bits (one-code Huffman tables), so a 64000x64000 frame is a 16 MB file
  that a decoder would expand to 4 GB.
- :func:`dx_with_frame`: a real DX chest dataset whose Pixel Data is a given frame
  while Rows/Columns keep saying what the test wants.
- :class:`RssWatch`: samples the resident size of every process of a node (its
  session) while an attack runs, and kills the node at once past a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
import time
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from tests.support.procfs import proc_stats, rss_bytes

DX_CHEST = Path("dicom") / "real" / "canon_DX_chest_966_fixed.dcm"


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def jpeg_bomb(rows: int, columns: int) -> bytes:
    """A valid 8-bit greyscale baseline JPEG of ``rows`` x ``columns`` (uniform grey).

    Parameters
    ----------
    rows, columns : int
        The size its SOF declares (up to 65535).

    Returns
    -------
    bytes
    """
    blocks = -(-rows // 8) * -(-columns // 8)
    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, value 0
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xDB, b"\x00" + b"\x01" * 64),
            _segment(0xC0, struct.pack(">BHHBBBB", 8, rows, columns, 1, 1, 0x11, 0)),
            _segment(0xC4, b"\x00" + one_code),  # DC: category 0
            _segment(0xC4, b"\x10" + one_code),  # AC: EOB
            _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])),
            bytes(-(-blocks * 2 // 8)),  # "0" (DC diff 0) + "0" (EOB) per block
            b"\xff\xd9",
        ]
    )


def dx_with_frame(shared_data: Path, frame: bytes, path: Path, *, rows: int, columns: int) -> Path:
    """A real DX chest PA (fresh UIDs) whose Pixel Data is ``frame`` (JPEG baseline),
    Rows/Columns as given, 8 bits, MONOCHROME2; written to ``path``."""
    ds = pydicom.dcmread(shared_data / DX_CHEST)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword in ("WindowCenter", "WindowWidth", "PresentationLUTShape"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def session_processes(session_id: int) -> list[int]:
    """Every live process of a session (a node started with ``start_new_session``)."""
    # field 6: the session
    return [pid for pid, fields in proc_stats() if int(fields[3]) == session_id]


def rss_mb(pid: int) -> float:
    """Resident size of a process in MB (0 when it is gone)."""
    return rss_bytes(pid) / (1024 * 1024)


class RssWatch(threading.Thread):
    """Sample every process of a node's session every ``period`` s; past ``limit_mb``,
    record it and SIGKILL the whole session (the machine is shared)."""

    def __init__(self, session_id: int, limit_mb: float, period: float = 0.05) -> None:
        super().__init__(name="rss-watch", daemon=True)
        self.session_id = session_id
        self.limit_mb = limit_mb
        self.period = period
        self.peak: dict[int, float] = {}
        self.exceeded: tuple[int, float] | None = None
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for pid in session_processes(self.session_id):
                rss = rss_mb(pid)
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss)
                if rss > self.limit_mb and self.exceeded is None:
                    self.exceeded = (pid, rss)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.session_id, signal.SIGKILL)
            self.samples += 1
            time.sleep(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    @property
    def max_mb(self) -> float:
        return max(self.peak.values(), default=0.0)
