"""deploy/README.md's bare-metal Orthanc snippet works as written (ports moved to free
ones), and deploy/README.md and compose.yaml agree on the compose project name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port, wait_until
from tests.integration.cli.node import serve
from tests.integration.deploy.helpers import Proc, http, http_ok

ORTHANC = "/usr/sbin/Orthanc"
DEPLOY_README = REPO_ROOT / "deploy" / "README.md"


def _snippet() -> dict:
    blocks = re.findall(r"```json\n(.*?)```", DEPLOY_README.read_text(), re.S)
    assert len(blocks) == 1, "deploy/README.md has one orthanc.json block"
    return json.loads(blocks[0])


def test_compose_and_its_readme_agree_on_the_project_name() -> None:
    name = "cxr-triage"
    compose = (REPO_ROOT / "deploy" / "compose.yaml").read_text()
    yaml.safe_load(compose)
    readme = DEPLOY_README.read_text()
    assert f"The compose project is named `{name}`" in readme
    for text in (readme, compose):
        commands = [line for line in text.splitlines() if "docker compose -f" in line]
        assert len(commands) >= 2
        for line in commands:
            assert re.search(r"\s-p\s+(\S+)", line)[1] == name, line


def test_the_orthanc_snippet_knows_the_node(tmp_path: Path) -> None:
    if not Path(ORTHANC).is_file():
        pytest.skip(f"{ORTHANC} not installed (Debian package orthanc)")
    config = _snippet()
    assert config["DicomModalities"]["triage"] == ["TRIAGE", "127.0.0.1", 11112]
    readme = DEPLOY_README.read_text()
    assert f"TRIAGE_DESTINATIONS={config['DicomAet']}@127.0.0.1:{config['DicomPort']}" in readme
    http_port, orthanc_dicom = free_port(), free_port()
    with serve(tmp_path) as node:
        config.update(
            HttpPort=http_port,
            DicomPort=orthanc_dicom,
            StorageDirectory=str(tmp_path / "storage"),
            IndexDirectory=str(tmp_path / "index"),
        )
        config["DicomModalities"]["triage"][2] = node.dicom_port
        path = tmp_path / "orthanc.json"
        path.write_text(json.dumps(config))
        orthanc = Proc("orthanc", [ORTHANC, str(path)], {}, tmp_path / "orthanc.log").start()
        try:
            url = f"http://127.0.0.1:{http_port}"
            wait_until(lambda: http_ok(f"{url}/system"), timeout=60, what="Orthanc")
            assert http("POST", f"{url}/modalities/triage/echo", {}) in (b"", {}, b"{}")
        finally:
            orthanc.stop()
