"""No patient name or ID in any log line of any node process (issue 13, point 8).

Studies whose patients have names of every shape (one component with a space, the
usual ``^``-separated form, multi-byte, with ``=`` ideographic and phonetic groups)
go through ``triage-node serve`` (its SCP processes, the inference and delivery
workers, their decode children and the API in one session), are triaged (highdicom
builds an SR that quotes a one-component name in a ``UserWarning``), delivered to a
dcmtk PACS and viewed through the API. Then every line the processes wrote (their
logs, standard output and standard error all go to one file) is searched for every
name component and every patient ID.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom

from tests.conftest import wait_until
from tests.integration.deploy.helpers import chest_copies
from tests.integration.reliability.conftest import UniquePacs
from tests.integration.scp.helpers import DCMTK_TIMEOUT_S

CHEST = Path("dicom") / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"

#: (PatientName, PatientID): every shape of name, each with searchable parts.
PATIENTS = [
    ("QZXSINGLE QZXONLY", "QZXPID001"),  # one component, like "SMITH JOHN"
    ("QZXFAMILY^QZXGIVEN^QZXMIDDLE^^QZXSUFFIX", "QZXPID002"),
    ("Qzxdüßelbërg^Qzxżółć", "QZXPID003"),  # multi-byte (UTF-8)
    ("Qzxyamada^Qzxtarou=山田^太郎=やまだ^たろう", "QZXPID004"),  # ideographic, phonetic
    ("山田太郎", "QZXPID005"),  # one ideographic component
]


def _secrets() -> list[str]:
    found = []
    for name, pid in PATIENTS:
        found.append(pid)
        for part in name.replace("=", "^").split("^"):
            found += [p for p in part.split(" ") if len(p) >= 2]
    return sorted(set(found))


def test_no_patient_name_or_id_in_any_process_output(
    serve_node, shared_data: Path, tmp_path: Path
) -> None:
    pacs = UniquePacs(tmp_path / "pacs", tmp_path / "logs").start()
    node = serve_node(destinations=pacs.destination, log_level="DEBUG")
    try:
        files = chest_copies(shared_data / CHEST, tmp_path / "studies", len(PATIENTS), size=128)
        studies = []
        for path, (name, pid) in zip(files, PATIENTS, strict=True):
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = name
            ds.PatientID = pid
            ds.save_as(path, enforce_file_format=True)
            studies.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
        out = subprocess.run(
            ["/usr/bin/storescu", "-aec", "TRIAGE", "-xe", "127.0.0.1", str(node.dicom_port),
             *map(str, files)],
            capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_until(
            lambda: all(node.result(uid) for uid, _ in studies) and pacs.count() >= len(studies),
            timeout=180,
            what="every study triaged and its SR delivered",
        )
        assert all(node.result(uid)[0] == "triaged" for uid, _ in studies)
        assert node.get("/api/worklist")[0] == 200
        for uid, sop in studies:
            assert node.get(f"/api/studies/{uid}")[0] == 200
            assert node.get(f"/api/studies/{uid}/images/{sop}/thumbnail")[0] == 200
    finally:
        node.proc.stop()
        pacs.stop()
    text = node.proc.log_path.read_text(encoding="utf-8", errors="backslashreplace")
    assert "is unlikely to represent the intended person name" in text or "UserWarning" in text, (
        "the SR writer's warning did not happen: the test would prove nothing"
    )
    leaks = {s: [line for line in text.splitlines() if s in line][:3] for s in _secrets()}
    escaped = {s: s.encode("ascii", "backslashreplace").decode() for s in _secrets()}
    leaks |= {
        s: [ln for ln in text.splitlines() if e in ln][:3] for s, e in escaped.items() if e != s
    }
    leaks = {k: v for k, v in leaks.items() if v}
    assert not leaks, leaks
    print(
        f"\n{len(text.splitlines())} lines of every node process searched for {len(_secrets())} "
        "name parts and IDs: none found"
    )
