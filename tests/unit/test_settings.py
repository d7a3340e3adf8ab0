"""The settings object: defaults, environment, config file, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from worklist.core.settings import Destination, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TRIAGE_"):
            monkeypatch.delenv(key)


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert s.ae_title == "TRIAGE"
    assert s.dicom_port == 11112
    assert s.http_port == 8080
    assert s.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'triage.db'}"
    assert s.effective_broker_url.startswith("sqla+sqlite:///")
    assert s.uses_embedded_broker
    assert s.destinations == []
    assert s.calling_ae_allowed("ANYONE") and s.peer_allowed("10.1.2.3")


def test_environment_lists_and_destinations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_DESTINATIONS", "PACS@127.0.0.1:104, ARCH@[::1]:11112")
    monkeypatch.setenv("TRIAGE_ALLOWED_CALLING_AES", "CR1,DX2")
    monkeypatch.setenv("TRIAGE_ALLOWED_PEERS", "10.0.0.0/8,127.0.0.1")
    monkeypatch.setenv("TRIAGE_BROKER_URL", "redis://127.0.0.1:6379/0")
    s = load_settings()
    assert s.destinations == [
        Destination("PACS", "127.0.0.1", 104),
        Destination("ARCH", "::1", 11112),
    ]
    # Written back as parsed (the embedded worker gets them through its environment).
    assert [str(d) for d in s.destinations] == ["PACS@127.0.0.1:104", "ARCH@[::1]:11112"]
    assert [Destination.parse(str(d)) for d in s.destinations] == s.destinations
    assert s.calling_ae_allowed("CR1") and not s.calling_ae_allowed("EVIL")
    assert s.peer_allowed("10.9.8.7") and s.peer_allowed("127.0.0.1")
    assert not s.peer_allowed("192.168.1.1")
    assert not s.uses_embedded_broker


def test_config_file_and_environment_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "triage.toml"
    config.write_text('ae_title = "FROMFILE"\ndicom_port = 104\nstable_seconds = 20\n')
    monkeypatch.setenv("TRIAGE_DICOM_PORT", "4242")
    s = load_settings(config)
    assert s.ae_title == "FROMFILE"
    assert s.dicom_port == 4242  # the environment wins
    assert s.stable_seconds == 20


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("TRIAGE_DESTINATIONS", "PACS-without-port", "AE@host:port"),
        ("TRIAGE_AE_TITLE", "A_TITLE_FAR_TOO_LONG_FOR_DICOM", "AE title"),
        ("TRIAGE_DICOM_PORT", "70000", "TRIAGE_DICOM_PORT"),
        ("TRIAGE_ALLOWED_PEERS", "not-an-address", "TRIAGE_ALLOWED_PEERS"),
        ("TRIAGE_TLS_CERT", "/etc/cert.pem", "tls_key"),
        ("TRIAGE_NO_SUCH_SETTING", "1", "NO_SUCH_SETTING"),
    ],
)
def test_invalid_values_are_named(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()
