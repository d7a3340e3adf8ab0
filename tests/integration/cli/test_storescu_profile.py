"""``deploy/storescu-cxr.cfg``: one dcmtk command sends a folder of mixed transfer syntaxes."""

from __future__ import annotations

import configparser
import shlex
import sqlite3
import subprocess
from pathlib import Path

import pydicom

from dicom_scp.contexts import SUPPORTED_TRANSFER_SYNTAXES
from tests.conftest import REPO_ROOT
from tests.integration.cli.node import serve

PROFILE = REPO_ROOT / "deploy" / "storescu-cxr.cfg"

# dcmtk's names of the transfer syntaxes (dcmdata/libsrc/dcxfer.cc).
DCMTK_NAMES = {
    "LittleEndianImplicit": "1.2.840.10008.1.2",
    "LittleEndianExplicit": "1.2.840.10008.1.2.1",
    "BigEndianExplicit": "1.2.840.10008.1.2.2",
    "DeflatedLittleEndianExplicit": "1.2.840.10008.1.2.1.99",
    "JPEGBaseline": "1.2.840.10008.1.2.4.50",
    "JPEGExtended:Process2+4": "1.2.840.10008.1.2.4.51",
    "JPEGLossless:Non-hierarchical:Process14": "1.2.840.10008.1.2.4.57",
    "JPEGLossless:Non-hierarchical-1stOrderPrediction": "1.2.840.10008.1.2.4.70",
    "JPEGLSLossless": "1.2.840.10008.1.2.4.80",
    "JPEGLSLossy": "1.2.840.10008.1.2.4.81",
    "JPEG2000LosslessOnly": "1.2.840.10008.1.2.4.90",
    "JPEG2000": "1.2.840.10008.1.2.4.91",
    "RLELossless": "1.2.840.10008.1.2.5",
}


def _readme_command() -> str:
    """The README's one-line command that sends a folder with the profile."""
    lines = [
        line.strip()
        for line in (REPO_ROOT / "README.md").read_text().splitlines()
        if line.startswith("storescu -xf deploy/storescu-cxr.cfg")
    ]
    assert len(lines) == 1, "the README gives one folder command"
    assert lines[0].endswith(" ../shared/data/dicom/real")
    return lines[0]


def _sections() -> dict[str, dict[str, str]]:
    """The profile's sections (dcmtk's ``[[Group]]`` headers are dropped)."""
    text = "\n".join(line for line in PROFILE.read_text().splitlines() if not line.startswith("[["))
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_profile_proposes_every_syntax_the_node_accepts_each_in_its_own_context() -> None:
    sections = _sections()
    contexts = list(sections["ChestRadiographs"].values())
    assert len(contexts) <= 128
    groups = {sop_and_group.split("\\")[1] for sop_and_group in contexts}
    proposed = [DCMTK_NAMES[ts] for group in groups for ts in sections[group].values()]
    assert sorted(proposed) == sorted(SUPPORTED_TRANSFER_SYNTAXES)
    for sop in (
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "SecondaryCaptureImageStorage",
    ):
        per_sop = [c.split("\\")[1] for c in contexts if c.startswith(sop + "\\")]
        # Every syntax, one compressed syntax per context.
        assert {DCMTK_NAMES[ts] for g in per_sop for ts in sections[g].values()} == set(
            SUPPORTED_TRANSFER_SYNTAXES
        )
        assert all(len(sections[g]) == 1 for g in per_sop)
    assert any(c.startswith("ComprehensiveSRStorage\\") for c in contexts)
    assert sections["Default"] == {"PresentationContexts": "ChestRadiographs"}


def test_one_command_sends_the_mixed_real_folder_to_the_node(
    tmp_path: Path, shared_data: Path
) -> None:
    folder = shared_data / "dicom" / "real"
    files = sorted(folder.glob("*.dcm"))
    syntaxes = {
        str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files
    }
    assert len(syntaxes) >= 5, "the folder is expected to mix transfer syntaxes"
    with serve(tmp_path) as node:
        # The README's command, word for word but for the port.
        command = _readme_command().replace("11112", str(node.dicom_port))
        sent = subprocess.run(
            shlex.split(command.replace("storescu", "/usr/bin/storescu", 1)),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "Store Failed" not in sent.stderr + sent.stdout
        db = sqlite3.connect(node.data_dir / "triage.db")
        stored = {
            row[0]: row[1]
            for row in db.execute("SELECT sop_instance_uid, transfer_syntax_uid FROM instances")
        }
        db.close()
    for path in files:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        assert stored.get(dataset.SOPInstanceUID) == str(dataset.file_meta.TransferSyntaxUID), (
            path.name
        )
