"""A decompression bomb against ``triage-node serve`` (issue 13, points 3 and 4).

A real DX chest whose DICOM header says 512x512 while its JPEG frame header (SOF)
says 64000x64000: a decoder would expand its 16 MB to 4 GB. The node must refuse it
from the frame header, before any decode, record the study as not evaluated with the
reason, and serve previews without decoding in the API process. The resident size of
every node process (serve, its SCP processes, the workers and their children) is
sampled while the attack runs; past 1 GB the node is killed and the test fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom

from tests.conftest import wait_until
from tests.integration.hostile.attacks import RssWatch, dx_with_frame, jpeg_bomb
from tests.integration.scp.helpers import DCMTK_TIMEOUT_S, STORESCU_TS_OPTION, transfer_syntax_of

LIMIT_MB = 1024.0


def _send(port: int, *files: Path) -> None:
    out = subprocess.run(
        ["/usr/bin/storescu", "-aec", "TRIAGE", "-xy", "-to", "60", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_jpeg_bomb_is_not_evaluated_and_costs_under_1_gb(
    serve_node, shared_data: Path, tmp_path: Path
) -> None:
    node = serve_node()
    bomb = dx_with_frame(
        shared_data, jpeg_bomb(64000, 64000), tmp_path / "bomb.dcm", rows=512, columns=512
    )
    honest = dx_with_frame(
        shared_data, jpeg_bomb(512, 512), tmp_path / "honest.dcm", rows=512, columns=512
    )
    bomb_ds = pydicom.dcmread(bomb, stop_before_pixels=True)
    honest_ds = pydicom.dcmread(honest, stop_before_pixels=True)
    watch = RssWatch(node.proc.pid, LIMIT_MB)
    watch.start()
    try:
        _send(node.dicom_port, bomb, honest)
        wait_until(
            lambda: (
                watch.exceeded
                or (
                    node.result(str(bomb_ds.StudyInstanceUID))
                    and node.result(str(honest_ds.StudyInstanceUID))
                )
            ),
            timeout=180,
            interval=0.2,
            what="both studies triaged",
        )
        assert watch.exceeded is None, f"process {watch.exceeded[0]}: {watch.exceeded[1]:.0f} MB"
        status, reason = node.result(str(bomb_ds.StudyInstanceUID))
        assert status == "not_evaluated", (status, reason)
        assert "64000x64000" in reason and "Rows=512, Columns=512" in reason, reason
        assert node.result(str(honest_ds.StudyInstanceUID))[0] == "triaged"

        # Previews: stored by the worker, served as files; the bomb's is a 422 with
        # the reason, however often it is asked for.
        study = f"/api/studies/{honest_ds.StudyInstanceUID}/images/{honest_ds.SOPInstanceUID}"
        code, body, kind = node.get(study + "/thumbnail")
        assert code == 200 and kind == "image/png" and body.startswith(b"\x89PNG"), (code, body)
        bomb_url = (
            f"/api/studies/{bomb_ds.StudyInstanceUID}/images/{bomb_ds.SOPInstanceUID}/thumbnail"
        )
        for _ in range(5):
            code, body, _kind = node.get(bomb_url)
            assert code == 422, (code, body)
            assert b"64000x64000" in body
        assert watch.exceeded is None, f"process {watch.exceeded[0]}: {watch.exceeded[1]:.0f} MB"
    finally:
        watch.stop()
    print(
        f"\npeak RSS of {len(watch.peak)} node processes over {watch.samples} samples: "
        f"max {watch.max_mb:.0f} MB (bound {LIMIT_MB:.0f} MB)"
    )
    assert watch.samples > 10


def _large_honest_chest(shared_data: Path, path: Path) -> Path:
    """The Canon DX chest scaled up 2.4x (5107x4800 rows by columns, 24.5 million pixels, within the
    30 million pixel budget), RLE lossless: headers that tell the truth, and a decode
    that needs its 49 MB of 16-bit pixels, twice over for the decoder's output and the
    float copy of the preprocessing, so more than 64 MB whatever the allocator does."""
    from pydicom.uid import RLELossless, generate_uid

    ds = pydicom.dcmread(shared_data / "dicom" / "real" / "canon_DX_chest_966_fixed.dcm")
    small = ds.pixel_array
    rows = np.arange(5107) * small.shape[0] // 5107
    columns = np.arange(4800) * small.shape[1] // 4800
    big = small[np.ix_(rows, columns)]  # nearest-neighbour upscale
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = big.shape
    ds.compress(RLELossless, np.ascontiguousarray(big))
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_decode_beyond_the_memory_limit_is_not_evaluated(
    serve_node, shared_data: Path, tmp_path: Path
) -> None:
    """A frame whose header tells the truth but whose decode needs more than the limit
    (64 MB, the least the setting allows, for a 24.5-million-pixel RLE chest): only the
    decode child fails, the study is not evaluated with the reason, and the worker
    carries on."""
    node = serve_node(decode_memory_mb=64)
    chest = _large_honest_chest(shared_data, tmp_path / "large.dcm")
    ds = pydicom.dcmread(chest, stop_before_pixels=True)
    assert ds.Rows * ds.Columns == 4800 * 5107
    out = subprocess.run(
        ["/usr/bin/storescu", "-aec", "TRIAGE", STORESCU_TS_OPTION[transfer_syntax_of(chest)],
         "-to", "60", "127.0.0.1", str(node.dicom_port), str(chest)],
        capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = wait_until(
        lambda: node.result(str(ds.StudyInstanceUID)), timeout=120, what="the study triaged"
    )
    status, reason = found
    assert status == "not_evaluated", found
    # the decoder's allocation fails in the child (MemoryError), or the child dies
    assert "MemoryError" in reason or "64 MB memory limit" in reason, reason
    assert node.proc.running()
