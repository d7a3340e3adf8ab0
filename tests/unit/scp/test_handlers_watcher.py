"""The thin handlers with fake events and sinks; the watcher with fake dependencies."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dicom_scp.handlers import (
    REJECT_CALLING_AE,
    REJECT_PEER,
    handle_association_request,
    handle_echo,
    handle_store,
)
from dicom_scp.sink import ReceivedInstance, StoreResult
from dicom_scp.status import StoreStatus
from dicom_scp.watcher import StabilityWatcher
from tests.conftest import wait_until
from worklist.core.settings import load_settings


def _store_event(encoded: bytes = b"bytes") -> Any:
    return SimpleNamespace(
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="MOD1 ", address="10.0.0.5")),
        context=SimpleNamespace(
            abstract_syntax="1.2.840.10008.5.1.4.1.1.1", transfer_syntax="1.2.840.10008.1.2.5"
        ),
        request=SimpleNamespace(AffectedSOPInstanceUID="1.2.3"),
        encoded_dataset=lambda: encoded,
    )


class _Sink:
    def __init__(self, result: StoreResult | Exception) -> None:
        self.result = result
        self.received: list[ReceivedInstance] = []

    def store(self, instance: ReceivedInstance) -> StoreResult:
        self.received.append(instance)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_handle_echo() -> None:
    assert handle_echo(SimpleNamespace()) == 0x0000


def test_handle_store_passes_the_event_to_the_sink() -> None:
    sink = _Sink(StoreResult(0x0000))
    assert handle_store(_store_event(b"DICM..."), sink) == 0x0000
    (received,) = sink.received
    assert received == ReceivedInstance(
        encoded=b"DICM...",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.5",
        calling_ae="MOD1",
        peer_address="10.0.0.5",
    )


def test_handle_store_passes_a_received_file_by_path(tmp_path: Path) -> None:
    sink = _Sink(StoreResult(0x0000))
    event = _store_event()
    event.encoded_dataset = lambda: pytest.fail("the dataset is in a file, not in memory")
    event.dataset_path = tmp_path / "tmp123.dcm"
    assert handle_store(event, sink) == 0x0000
    (received,) = sink.received
    assert received.dataset_path == tmp_path / "tmp123.dcm" and received.encoded == b""


def test_handle_store_failure_status_carries_a_comment() -> None:
    status = handle_store(_store_event(), _Sink(StoreResult(0xA700, "spool full")))
    assert status.Status == 0xA700 and status.ErrorComment == "spool full"


@pytest.mark.parametrize(
    ("exc", "expected"), [(OSError(28, "full"), 0xA700), (RuntimeError("bug"), 0x0110)]
)
def test_handle_store_never_raises(
    exc: Exception, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    status = handle_store(_store_event(), _Sink(exc))
    assert status.Status == expected
    assert "C-STORE handler failed" in caplog.text


def test_handle_store_survives_a_broken_event() -> None:
    event = _store_event()
    event.encoded_dataset = lambda: (_ for _ in ()).throw(AttributeError("no dataset"))
    status = handle_store(event, _Sink(StoreResult(0x0000)))
    assert status.Status == StoreStatus.PROCESSING_FAILURE


class _Assoc:
    def __init__(self, calling: str, address: str) -> None:
        self.requestor = SimpleNamespace(
            primitive=SimpleNamespace(calling_ae_title=calling), address=address
        )
        self.rejected: tuple[int, ...] | None = None
        self.killed = False
        self.acse = SimpleNamespace(send_reject=self._reject)

    def _reject(self, *reason: int) -> None:
        self.rejected = reason

    def kill(self) -> None:
        self.killed = True


@pytest.mark.parametrize(
    ("calling", "address", "reason"),
    [
        ("MOD1", "10.1.2.3", None),
        ("MOD1  ", "10.1.2.3", None),
        ("OTHER", "10.1.2.3", REJECT_CALLING_AE),
        ("MOD1", "192.168.0.1", REJECT_PEER),
    ],
)
def test_association_policy(calling: str, address: str, reason: tuple[int, ...] | None) -> None:
    settings = load_settings(allowed_calling_aes=["MOD1", "PACS"], allowed_peers=["10.1.0.0/16"])
    assoc = _Assoc(calling, address)
    handle_association_request(SimpleNamespace(assoc=assoc), settings)
    assert assoc.rejected == reason
    assert assoc.killed == (reason is not None)


def test_association_policy_open_by_default() -> None:
    assoc = _Assoc("ANYONE", "203.0.113.9")
    handle_association_request(SimpleNamespace(assoc=assoc), load_settings())
    assert assoc.rejected is None and not assoc.killed


class _BrokenFactory:
    """A session factory whose every transaction fails (database down)."""

    def __init__(self) -> None:
        self.calls = 0

    def begin(self) -> Any:
        self.calls += 1
        raise RuntimeError("database is down")

    def __call__(self) -> Any:
        raise RuntimeError("database is down")


class _Queue:
    def enqueue(self, study_id: int, revision: int) -> None:  # pragma: no cover
        raise AssertionError("nothing to enqueue")


def test_watcher_survives_failing_rounds_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    factory = _BrokenFactory()
    watcher = StabilityWatcher(factory, _Queue(), quiet_seconds=1.0, poll_seconds=0.01)  # type: ignore[arg-type]
    watcher.start()
    try:
        wait_until(lambda: factory.calls >= 3, timeout=10, what="three failing rounds")
        assert watcher.is_alive
        assert "stability round failed" in caplog.text
    finally:
        watcher.stop()
    assert not watcher.is_alive
    assert not any(t.name == "stability-watcher" for t in threading.enumerate())


def test_watcher_run_once_returns_empty_on_error() -> None:
    watcher = StabilityWatcher(_BrokenFactory(), _Queue(), quiet_seconds=1, poll_seconds=1)  # type: ignore[arg-type]
    assert watcher.run_once() == []
    assert watcher.rounds == 1
