"""DICOM TLS: storescu/echoscu over TLS with certificates made here by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scp.helpers import count_instances, need_dcmtk, storescu_as_is

CHEST = "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm"


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "2", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    need_dcmtk()
    server_key, server_crt = _self_signed(tmp_path, "server")
    client_key, client_crt = _self_signed(tmp_path, "client")
    return {
        "server_key": server_key,
        "server_crt": server_crt,
        "client_key": client_key,
        "client_crt": client_crt,
    }


def test_tls_store(
    shared_data: Path,
    make_settings: Any,
    start_node: Any,
    session_factory: Any,
    certs: dict[str, Path],
) -> None:
    settings = make_settings(tls_cert=certs["server_crt"], tls_key=certs["server_key"])
    start_node(settings)
    path = shared_data / CHEST

    plain = storescu_as_is(settings.dicom_port, path)
    assert plain.returncode != 0
    assert count_instances(session_factory) == 0

    secure = storescu_as_is(settings.dicom_port, path, tls=["+tla", "+cf", certs["server_crt"]])
    assert secure.returncode == 0, secure.stderr
    assert "Received Store Response (Success)" in secure.stderr
    assert count_instances(session_factory) == 1


def test_tls_requires_client_certificate_when_ca_set(
    shared_data: Path,
    make_settings: Any,
    start_node: Any,
    session_factory: Any,
    certs: dict[str, Path],
) -> None:
    settings = make_settings(
        tls_cert=certs["server_crt"], tls_key=certs["server_key"], tls_ca=certs["client_crt"]
    )
    start_node(settings)
    path = shared_data / CHEST

    anonymous = storescu_as_is(settings.dicom_port, path, tls=["+tla", "+cf", certs["server_crt"]])
    assert anonymous.returncode != 0
    assert count_instances(session_factory) == 0

    client = ["+tls", certs["client_key"], certs["client_crt"], "-pw", "+cf", certs["server_crt"]]
    authenticated = storescu_as_is(settings.dicom_port, path, tls=client)
    assert authenticated.returncode == 0, authenticated.stderr
    assert count_instances(session_factory) == 1
