"""Orthanc as the PACS, end to end: Debian's Orthanc knows the node as a modality; a
real chest radiograph (JPEG 2000) is uploaded to Orthanc over REST, Orthanc sends it
to ``triage-node serve`` by C-STORE, and the node's SR comes back into the same study
in Orthanc, where its content is read through Orthanc's REST API."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import free_port, wait_until
from tests.integration.deploy.helpers import (
    Proc,
    echo,
    http,
    http_ok,
    need_tools,
    node_env,
    triage_node,
)

ORTHANC = "/usr/sbin/Orthanc"
CHEST = Path("dicom") / "real" / "RG1_J2KI.dcm"
ABNORMAL, NORMAL = "263654008", "17621005"  # SNOMED CT
FINDING = ("DCM", "121071")  # Finding
ALGORITHM_NAME = ("DCM", "111001")
ALGORITHM_VERSION = ("DCM", "111003")


@dataclass
class Orthanc:
    """An Orthanc process on free ports, with its storage under ``directory``."""

    directory: Path
    node_port: int
    http_port: int = 0
    dicom_port: int = 0
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        self.http_port, self.dicom_port = free_port(), free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "orthanc-triage-test",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {"triage": ["TRIAGE", "127.0.0.1", self.node_port]},
            "Plugins": [],
            "StableAge": 1,
        }
        path = self.directory / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.proc = Proc(
            "orthanc", [ORTHANC, "--verbose", str(path)], {}, self.directory / "orthanc.log"
        ).start()
        wait_until(self._up, timeout=60, interval=0.2, what="Orthanc's REST API")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if not self.proc.running():
            pytest.fail(f"Orthanc exited:\n{self.proc.tail()}")
        return http_ok(f"{self.url}/system")

    def get(self, path: str) -> Any:
        return http("GET", f"{self.url}{path}")

    def post(self, path: str, body: Any) -> Any:
        return http("POST", f"{self.url}{path}", body, timeout=120)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture
def node_and_orthanc(tmp_path: Path) -> Iterator[tuple[Proc, Orthanc, Path]]:
    """``triage-node serve`` (embedded: SQLite, local broker) whose destination is an
    Orthanc that knows the node as modality ``triage``."""
    if not Path(ORTHANC).is_file():
        pytest.skip(f"{ORTHANC} not installed (Debian package orthanc)")
    need_tools("echoscu")
    dicom_port, http_port = free_port(), free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=dicom_port)
    node: Proc | None = None
    data_dir = tmp_path / "node-data"
    try:
        orthanc.start()
        env = node_env(
            data_dir=data_dir,
            dicom_host="127.0.0.1",
            dicom_port=dicom_port,
            http_host="127.0.0.1",
            http_port=http_port,
            stable_seconds=1,
            stability_poll_seconds=0.2,
            min_free_mb=0,
            destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        )
        node = triage_node("node", ["serve"], env, tmp_path / "logs")

        def node_up() -> bool:
            assert node is not None
            if not node.running():
                pytest.fail(f"triage-node serve exited:\n{node.tail()}")
            return echo(dicom_port) and http_ok(f"http://127.0.0.1:{http_port}/healthz")

        wait_until(node_up, timeout=90, interval=0.3, what="triage-node serve")
        # Orthanc can reach the node (C-ECHO from Orthanc's side).
        orthanc.post("/modalities/triage/echo", {})
        yield node, orthanc, data_dir
    except BaseException:
        for proc in (node, orthanc.proc):
            if proc is not None:
                print(proc.tail())
        raise
    finally:
        if node is not None:
            node.stop(timeout=40)
        orthanc.stop()


def _content_items(items: Any) -> Iterator[pydicom.Dataset]:
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _content_items(item.ContentSequence)


def _concept(item: pydicom.Dataset) -> tuple[str, str] | None:
    if "ConceptNameCodeSequence" not in item:
        return None
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def test_orthanc_sends_chest_and_receives_sr(
    node_and_orthanc: tuple[Proc, Orthanc, Path], shared_data: Path, tmp_path: Path
) -> None:
    node, orthanc, data_dir = node_and_orthanc
    chest = shared_data / CHEST
    sent = pydicom.dcmread(chest, stop_before_pixels=True)
    try:
        uploaded = orthanc.post("/instances", chest.read_bytes())
        assert uploaded["Status"] in ("Success", "AlreadyStored"), uploaded
        instance_id, study_id = uploaded["ID"], uploaded["ParentStudy"]

        job = orthanc.post(
            "/modalities/triage/store", {"Resources": [instance_id], "Synchronous": True}
        )
        assert job.get("FailedInstancesCount", 0) == 0, job

        def sr_series() -> str | None:
            for series in orthanc.get(f"/studies/{study_id}/series"):
                if series["MainDicomTags"].get("Modality") == "SR" and series["Instances"]:
                    return str(series["ID"])
            return None

        series_id = wait_until(
            sr_series, timeout=120, interval=0.5, what="an SR series in the study in Orthanc"
        )
        series = orthanc.get(f"/studies/{study_id}/series")
        assert len(series) == 2, [s["MainDicomTags"] for s in series]
        (sr_id,) = orthanc.get(f"/series/{series_id}")["Instances"]
        tags = orthanc.get(f"/instances/{sr_id}/simplified-tags")
        sr_bytes = orthanc.get(f"/instances/{sr_id}/file")
        sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    except BaseException:
        print(node.tail())
        raise

    # Same patient and study as the radiograph Orthanc sent.
    assert tags["StudyInstanceUID"] == sent.StudyInstanceUID == sr.StudyInstanceUID
    assert tags["Modality"] == "SR"
    assert sr.PatientID == sent.PatientID
    assert sr.SeriesInstanceUID != sent.SeriesInstanceUID

    # It references the instance that was sent.
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {str(sent.SOPInstanceUID)}
    image_refs = {
        str(ref.ReferencedSOPInstanceUID)
        for item in _content_items(sr.ContentSequence)
        if item.ValueType == "IMAGE"
        for ref in item.ReferencedSOPSequence
    }
    assert image_refs <= {str(sent.SOPInstanceUID)}

    # The finding (Abnormal or Normal), a probability in [0, 1], the algorithm.
    items = list(_content_items(sr.ContentSequence))
    findings = [
        str(i.ConceptCodeSequence[0].CodeValue)
        for i in items
        if i.ValueType == "CODE" and _concept(i) == FINDING
    ]
    assert findings and set(findings) <= {ABNORMAL, NORMAL}, findings
    probabilities = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM"
        and "probab" in str(i.ConceptNameCodeSequence[0].CodeMeaning).lower()
    ]
    assert probabilities and all(0.0 <= p <= 1.0 for p in probabilities), probabilities
    names = [
        str(i.TextValue) for i in items if i.ValueType == "TEXT" and _concept(i) == ALGORITHM_NAME
    ]
    versions = [
        str(i.TextValue)
        for i in items
        if i.ValueType == "TEXT" and _concept(i) == ALGORITHM_VERSION
    ]
    assert names and versions

    # And it is the result the node recorded for that study.
    db = sqlite3.connect(data_dir / "triage.db")
    try:
        row = db.execute(
            "SELECT r.decision, r.probability, r.model_name, r.model_version,"
            " r.sr_sop_instance_uid FROM triage_results r JOIN studies s ON s.id = r.study_id"
            " WHERE s.study_instance_uid = ?",
            (str(sent.StudyInstanceUID),),
        ).fetchone()
    finally:
        db.close()
    assert row is not None
    decision, probability, model_name, model_version, sr_uid = row
    assert sr_uid == str(sr.SOPInstanceUID)
    assert {ABNORMAL: "abnormal", NORMAL: "normal"}[findings[0]] == decision
    assert any(p == pytest.approx(probability, abs=1e-6) for p in probabilities)
    assert set(names) == {model_name} and set(versions) == {model_version}

    # The SR as Orthanc stores and serves it is a valid IOD.
    if shutil.which("dciodvfy"):
        path = tmp_path / "sr-from-orthanc.dcm"
        path.write_bytes(sr_bytes)
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        report = out.stdout + out.stderr
        assert [line for line in report.splitlines() if line.startswith("Error")] == [], report
