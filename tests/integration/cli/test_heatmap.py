"""On a real node, an abnormal study gets a heatmap of each evaluated image (the default
model's class-activation map), served over the thumbnail and labelled; a normal study
gets none."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from tests.conftest import wait_until
from tests.integration.cli.node import serve
from worklist.heatmaps import LABEL, heatmap_path, load_heatmap

ABNORMAL = "RG1_from_J2KI_explicit.dcm"  # the default model: 96 %, abnormal
NORMAL = "konica_CR_chest_Monochrome1-Jpeg.dcm"  # 41 % (threshold 54 %), normal; JPEG baseline


def _decision(db_path: Path, study_uid: str) -> str | None:
    db = sqlite3.connect(db_path)
    try:
        row = db.execute(
            "SELECT r.decision FROM triage_results r JOIN studies s ON s.id = r.study_id"
            " WHERE s.study_instance_uid = ? AND r.revision = 1",
            (study_uid,),
        ).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def _get(url: str, token: str) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_abnormal_study_has_a_heatmap_and_a_normal_one_none(
    tmp_path: Path, shared_data: Path
) -> None:
    files = [shared_data / "dicom" / "real" / name for name in (ABNORMAL, NORMAL)]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    (abnormal, normal) = headers
    with serve(tmp_path) as node:
        assert (
            node.cli(
                "user",
                "add",
                "rad",
                "--role",
                "radiologist",
                "--password-stdin",
                stdin="a long enough passphrase\n",
            ).returncode
            == 0
        )
        token = node.cli(
            "token", "add", "--user", "rad", "--name", "test", "--no-expiry"
        ).stdout.strip()
        for path in files:
            sent = subprocess.run(
                [
                    "/usr/bin/storescu",
                    "-xy",  # propose JPEG baseline too (the normal study), and uncompressed
                    "-aec",
                    "TRIAGE",
                    "127.0.0.1",
                    str(node.dicom_port),
                    str(path),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
        db_path = node.data_dir / "triage.db"
        wait_until(
            lambda: all(_decision(db_path, str(h.StudyInstanceUID)) for h in headers),
            timeout=120,
            what="both studies triaged",
        )
        assert _decision(db_path, str(abnormal.StudyInstanceUID)) == "abnormal"
        assert _decision(db_path, str(normal.StudyInstanceUID)) == "normal"
        stored = heatmap_path(
            node.data_dir, str(abnormal.StudyInstanceUID), 1, str(abnormal.SOPInstanceUID)
        )
        # The map is made after the result is recorded (it never delays the SR).
        wait_until(stored.is_file, timeout=60, what="the heatmap")
        grid = load_heatmap(stored)
        assert grid is not None and grid.shape == (8, 8)
        assert grid.max() == 1.0 and np.isfinite(grid).all()
        assert not (node.data_dir / "heatmaps" / str(normal.StudyInstanceUID)).exists()

        base = f"http://127.0.0.1:{node.http_port}/api/studies"
        url = f"{base}/{abnormal.StudyInstanceUID}/images/{abnormal.SOPInstanceUID}"
        status, overlay, head = _get(f"{url}/heatmap", token)
        assert status == 200 and head["content-type"] == "image/png"
        assert head["x-content-label"] == LABEL
        _status, thumb, _ = _get(f"{url}/thumbnail", token)
        a = np.asarray(Image.open(io.BytesIO(overlay)).convert("RGB"), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(thumb)).convert("RGB"), dtype=int)
        assert a.shape == b.shape
        assert ((a[..., 0] - a[..., 1]) > 40).mean() > 0.01  # red where the model looked
        status, _body, _ = _get(
            f"{base}/{normal.StudyInstanceUID}/images/{normal.SOPInstanceUID}/heatmap", token
        )
        assert status == 404


def _deliveries(db_path: Path) -> list[tuple[int, str, str, str]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(
            "SELECT id, kind, state, sop_instance_uid FROM deliveries ORDER BY id"
        ).fetchall()
    finally:
        db.close()


def test_heatmap_sc_reaches_the_pacs_through_the_outbox(tmp_path: Path, shared_data: Path) -> None:
    """With TRIAGE_HEATMAP_TO_PACS on, dcmtk's storescp (the PACS) receives the SR and,
    after it, a Secondary Capture of the abnormal image with its heatmap, valid under
    dciodvfy, in the source's study."""
    from tests.integration.triage.conftest import Pacs, need_tools
    from triage.heatmap_sc import heatmap_sc_uids

    need_tools("storescp", "echoscu", "dciodvfy")
    source = shared_data / "dicom" / "real" / ABNORMAL
    header = pydicom.dcmread(source, stop_before_pixels=True)
    pacs = Pacs(tmp_path / "pacs").start()
    try:
        settings = {"TRIAGE_DESTINATIONS": pacs.destination, "TRIAGE_HEATMAP_TO_PACS": "true"}
        with serve(tmp_path, settings=settings) as node:
            sent = subprocess.run(
                ["/usr/bin/storescu", "-aec", "TRIAGE", "127.0.0.1", str(node.dicom_port)]
                + [str(source)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            db_path = node.data_dir / "triage.db"
            rows = wait_until(
                lambda: (
                    (r := _deliveries(db_path))
                    and all(state == "delivered" for _i, _k, state, _u in r)
                    and r
                ),
                timeout=120,
                what="the SR and the heatmap SC delivered",
            )
        assert _decision(db_path, str(header.StudyInstanceUID)) == "abnormal"
    finally:
        pacs.stop()
    assert [kind for _id, kind, _s, _u in rows] == ["sr", "heatmap_sc"]
    _series, sc_uid = heatmap_sc_uids(str(header.StudyInstanceUID), 1, str(header.SOPInstanceUID))
    assert rows[1][3] == sc_uid
    received = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in pacs.received()
    }
    assert set(received) == {rows[0][3], sc_uid}
    out = subprocess.run(["dciodvfy", str(received[sc_uid])], capture_output=True, text=True)
    assert [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")] == []
    sc = pydicom.dcmread(received[sc_uid])
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == header.StudyInstanceUID and sc.PatientID == header.PatientID
    assert sc.SeriesDescription == LABEL and sc.BurnedInAnnotation == "YES"
    pixels = sc.pixel_array.astype(int)
    assert ((pixels[..., 0] - pixels[..., 1]) > 40).mean() > 0.01  # red where the model looked
    Image.fromarray(sc.pixel_array).save(tmp_path / "heatmap_sc.png")
