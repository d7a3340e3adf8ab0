"""AE configuration and TLS context from the settings (no network)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from dicom_scp.ae import MAX_PDU_BYTES, build_ae, event_handlers, ssl_context
from dicom_scp.contexts import SUPPORTED_TRANSFER_SYNTAXES, storage_sop_classes
from worklist.core.settings import load_settings


def test_build_ae_from_settings() -> None:
    settings = load_settings(ae_title="CXRNODE", max_associations=3)
    ae = build_ae(settings)
    assert ae.ae_title == "CXRNODE"
    assert ae.require_called_aet is True
    assert ae.maximum_associations == 3
    assert 0 < ae.acse_timeout <= 60 and ae.dimse_timeout > 0 and ae.network_timeout > 0
    assert ae.maximum_pdu_size == MAX_PDU_BYTES == 1024 * 1024
    abstract = [str(c.abstract_syntax) for c in ae.supported_contexts]
    assert set(abstract) == {"1.2.840.10008.1.1", *storage_sop_classes()}
    for context in ae.supported_contexts:
        if str(context.abstract_syntax) != "1.2.840.10008.1.1":
            assert {str(t) for t in context.transfer_syntax} == set(SUPPORTED_TRANSFER_SYNTAXES)


def test_event_handlers_bind_dependencies() -> None:
    settings = load_settings()
    sink = object()
    handlers = event_handlers(settings, sink)  # type: ignore[arg-type]
    names = {h[0].name: h for h in handlers}
    assert set(names) == {"EVT_REQUESTED", "EVT_C_ECHO", "EVT_C_STORE", "EVT_PDU_SENT"}
    assert names["EVT_C_STORE"][2] == [sink]
    assert names["EVT_REQUESTED"][2] == [settings]


def test_no_tls_without_certificate() -> None:
    assert ssl_context(load_settings()) is None


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=node", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, crt


def test_tls_context(cert: tuple[Path, Path]) -> None:
    key, crt = cert
    context = ssl_context(load_settings(tls_cert=crt, tls_key=key))
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    mutual = ssl_context(load_settings(tls_cert=crt, tls_key=key, tls_ca=crt))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
