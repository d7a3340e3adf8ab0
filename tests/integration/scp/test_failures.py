"""Failure paths of the spool sink: nothing half-done is left behind, ever."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

import dicom_scp.sink as sink_module
from dicom_scp.ae import start_scp
from dicom_scp.sink import (
    TEMP_SUFFIX,
    ReceivedInstance,
    SpoolSink,
    UidLocks,
    clean_stale_temp_files,
    incoming_dir,
)
from dicom_scp.status import StoreStatus
from tests.conftest import spool_files
from tests.integration.scp.helpers import (
    count_instances,
    pyscu_echo,
    pyscu_store,
    received_instance,
)
from worklist.core.db import make_engine, make_session_factory

CHEST = "dicom/real/fuji_CR_chest_from_fodicom_withmeta.dcm"


def test_spool_that_is_a_file_gives_a700_over_the_network(
    shared_data: Path, make_settings: Any, session_factory: Any, tmp_path: Path
) -> None:
    settings = make_settings()
    not_a_dir = tmp_path / "spool-is-a-file"
    not_a_dir.write_bytes(b"not a directory")
    server = start_scp(settings, SpoolSink(not_a_dir, session_factory, 0))
    try:
        assert pyscu_store(settings.dicom_port, shared_data / CHEST) == 0xA700
        assert count_instances(session_factory) == 0
        assert not_a_dir.read_bytes() == b"not a directory"
        assert pyscu_echo(settings.dicom_port) == 0x0000  # still serving
    finally:
        server.shutdown()


def test_database_failure_gives_a700_and_leaves_no_file(shared_data: Path, tmp_path: Path) -> None:
    # A database without the schema: every statement fails.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        spool = tmp_path / "spool"
        result = SpoolSink(spool, make_session_factory(engine), 0).store(
            received_instance(shared_data / CHEST)
        )
        assert result.status == StoreStatus.OUT_OF_RESOURCES
        assert spool_files(spool) == []
    finally:
        engine.dispose()


def test_write_failure_gives_a700_and_leaves_no_partial_file(
    shared_data: Path, session_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = sink_module.os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the data file, not its directory
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(sink_module.os, "fsync", failing_fsync)
    spool = tmp_path / "spool"
    result = SpoolSink(spool, session_factory, 0).store(received_instance(shared_data / CHEST))
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert spool_files(spool) == []
    assert count_instances(session_factory) == 0


def test_rename_failure_gives_a700_and_no_row(
    shared_data: Path, session_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sink_module.os, "replace", failing_replace)
    spool = tmp_path / "spool"
    result = SpoolSink(spool, session_factory, 0).store(received_instance(shared_data / CHEST))
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert spool_files(spool) == []
    assert count_instances(session_factory) == 0


class _FailingCommitSession(Session):
    def commit(self) -> None:
        raise OperationalError("COMMIT", {}, Exception("connection lost"))


def _failing_commit_factory(session_factory: Any) -> sessionmaker:
    return sessionmaker(bind=session_factory.kw["bind"], class_=_FailingCommitSession)


def test_commit_failure_removes_the_new_file(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    sink = SpoolSink(spool, _failing_commit_factory(session_factory), 0)
    result = sink.store(received_instance(shared_data / CHEST))
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert spool_files(spool) == []
    assert count_instances(session_factory) == 0


def test_commit_failure_on_resend_keeps_the_acknowledged_copy(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    received = received_instance(shared_data / CHEST)
    first = SpoolSink(spool, session_factory, 0).store(received)
    assert first.ok and first.path is not None
    again = SpoolSink(spool, _failing_commit_factory(session_factory), 0).store(received)
    assert again.status == StoreStatus.OUT_OF_RESOURCES
    assert first.path.read_bytes() == received.encoded
    assert spool_files(spool) == [first.path]
    assert count_instances(session_factory) == 1


def test_free_space_watermark_refuses_then_resumes(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    free = {"bytes": 10 * 1024 * 1024}
    spool = tmp_path / "spool"
    sink = SpoolSink(spool, session_factory, 100, free_bytes=lambda _path: free["bytes"])
    received = received_instance(shared_data / CHEST)
    assert sink.store(received).status == StoreStatus.OUT_OF_RESOURCES
    assert spool_files(spool) == [] and count_instances(session_factory) == 0
    free["bytes"] = 10 * 1024**3
    assert sink.store(received).ok
    assert count_instances(session_factory) == 1


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "1.2" / "1.2.3").mkdir(parents=True)
    stale = spool / "1.2" / "1.2.3" / f".1.2.3.4.abc{TEMP_SUFFIX}"
    stale.write_bytes(b"half")
    kept = spool / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    kept.write_bytes(b"whole")
    incoming = incoming_dir(spool)
    incoming.mkdir()
    (incoming / "tmpabc123.dcm").write_bytes(b"half received")
    assert clean_stale_temp_files(spool) == 2
    assert not stale.exists() and kept.exists()
    assert list(incoming.iterdir()) == []
    assert clean_stale_temp_files(tmp_path / "missing") == 0


def test_store_records_and_spools(shared_data: Path, session_factory: Any, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    received = received_instance(shared_data / CHEST)
    result = SpoolSink(spool, session_factory, 0).store(received)
    assert result.ok and result.path is not None
    ds = dcmread(shared_data / CHEST, stop_before_pixels=True)
    assert result.path == (
        spool.absolute() / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )
    assert result.path.read_bytes() == received.encoded
    assert spool_files(spool) == [result.path]


def _received_file(path: Path, spool: Path) -> ReceivedInstance:
    """The instance as the SCP hands it over with chunked receive: a file in the spool."""
    incoming = incoming_dir(spool)
    incoming.mkdir(parents=True, exist_ok=True)
    copy = incoming / f"tmp{os.urandom(4).hex()}.dcm"
    shutil.copyfile(path, copy)
    return replace(received_instance(path), encoded=b"", dataset_path=copy)


@pytest.mark.parametrize("step", ["fsync_file", "record", "replace", "fsync_dir", "commit"])
@pytest.mark.parametrize("resend", [False, True])
@pytest.mark.parametrize("via_file", [False, True])
def test_a_failure_at_any_step_keeps_row_and_file_consistent(
    step: str,
    resend: bool,
    via_file: bool,
    shared_data: Path,
    session_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever step fails: no temp file, and a row exists iff a complete file does."""
    spool = tmp_path / "spool"
    received = received_instance(shared_data / CHEST)
    if resend:
        assert SpoolSink(spool, session_factory, 0).store(received).ok
    if via_file:
        received = _received_file(shared_data / CHEST, spool)
    factory = session_factory
    real_fsync = os.fsync
    replaced: list[bool] = []

    def fsync(fd: int) -> None:
        is_file = stat.S_ISREG(os.fstat(fd).st_mode)
        if (step == "fsync_file" and is_file) or (step == "fsync_dir" and replaced):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if step == "replace":
            raise OSError(5, "Input/output error")
        real_replace(src, dst)
        replaced.append(True)

    monkeypatch.setattr(sink_module.os, "fsync", fsync)
    monkeypatch.setattr(sink_module.os, "replace", replace)
    if step == "record":
        monkeypatch.setattr(
            sink_module,
            "record_instance",
            lambda *a, **k: (_ for _ in ()).throw(OperationalError("INSERT", {}, Exception())),
        )
    if step == "commit":
        factory = _failing_commit_factory(session_factory)

    result = SpoolSink(spool, factory, 0).store(received)
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    files = spool_files(spool)
    assert not [p for p in files if p.name.endswith(TEMP_SUFFIX)]
    rows = count_instances(session_factory)
    assert rows == (1 if resend else 0)
    original = (shared_data / CHEST).read_bytes()
    if rows:
        assert len(files) == 1 and files[0].read_bytes() == original
    else:
        assert files == []


def test_a_received_file_is_moved_into_place(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    received = _received_file(shared_data / CHEST, spool)
    assert received.dataset_path is not None
    result = SpoolSink(spool, session_factory, 0).store(received)
    assert result.ok and result.path is not None
    assert not received.dataset_path.exists()
    assert result.path.read_bytes() == (shared_data / CHEST).read_bytes()
    assert spool_files(spool) == [result.path]
    assert count_instances(session_factory) == 1
    # The same mode as a file the sink writes from bytes, not tempfile's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o666 & ~umask


def test_a_received_file_on_another_file_system_is_copied(
    shared_data: Path, session_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    received = _received_file(shared_data / CHEST, spool)
    real_stat = os.stat

    def stat_other_device(path: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_stat(path, *args, **kwargs)
        if Path(path) == received.dataset_path:
            values = list(result)
            values[stat.ST_DEV] += 1
            return os.stat_result(values)
        return result

    monkeypatch.setattr(sink_module.os, "stat", stat_other_device)
    result = SpoolSink(spool, session_factory, 0).store(received)
    assert result.ok and result.path is not None
    assert received.dataset_path is not None and not received.dataset_path.exists()
    assert result.path.read_bytes() == (shared_data / CHEST).read_bytes()
    assert spool_files(spool) == [result.path]


def test_a_refused_received_file_is_left_to_its_owner(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    """Refused before it is taken over (here: wrong SOP class): pynetdicom removes it."""
    spool = tmp_path / "spool"
    received = replace(_received_file(shared_data / CHEST, spool), sop_class_uid="1.2.3")
    result = SpoolSink(spool, session_factory, 0).store(received)
    assert result.status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert received.dataset_path is not None and received.dataset_path.exists()
    assert count_instances(session_factory) == 0


class _Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing handles it)."""


class _CrashingCommitSession(Session):
    def commit(self) -> None:
        raise _Crash


def test_crash_between_rename_and_commit_then_resend(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    received = received_instance(shared_data / CHEST)
    crashing = sessionmaker(bind=session_factory.kw["bind"], class_=_CrashingCommitSession)
    with pytest.raises(_Crash):
        SpoolSink(spool, crashing, 0).store(received)
    # A complete file under its final name, no row: the sender saw no success.
    (orphan,) = spool_files(spool)
    assert orphan.read_bytes() == received.encoded
    assert count_instances(session_factory) == 0
    # Start-up cleaning keeps it (it is complete); the re-send records it.
    assert clean_stale_temp_files(spool) == 0
    result = SpoolSink(spool, session_factory, 0).store(received)
    assert result.ok and result.path == orphan
    assert count_instances(session_factory) == 1
    assert spool_files(spool) == [orphan]


def test_abandoned_receives_are_swept(session_factory: Any, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    incoming = incoming_dir(spool)
    incoming.mkdir(parents=True)
    old, fresh = incoming / "tmpold.dcm", incoming / "tmpnew.dcm"
    old.write_bytes(b"abandoned mid-dataset")
    fresh.write_bytes(b"still arriving")
    os.utime(old, (time.time() - 700, time.time() - 700))
    sink = SpoolSink(spool, session_factory, 0, abandoned_after_s=600)
    assert sink.sweep_incoming() == 1
    assert not old.exists() and fresh.exists()
    assert SpoolSink(tmp_path / "no-spool", session_factory, 0).sweep_incoming() == 0


def test_low_space_sweeps_abandoned_receives_first(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    """The abandoned file's space counts: once it is gone the store is accepted."""
    spool = tmp_path / "spool"
    abandoned = incoming_dir(spool) / "tmpold.dcm"
    abandoned.parent.mkdir(parents=True)
    abandoned.write_bytes(b"\0" * 1024)
    os.utime(abandoned, (time.time() - 700, time.time() - 700))
    sink = SpoolSink(
        spool,
        session_factory,
        1,
        free_bytes=lambda _p: (1 << 20) if not abandoned.exists() else 0,
        abandoned_after_s=600,
    )
    assert sink.store(_received_file(shared_data / CHEST, spool)).ok
    assert not abandoned.exists()


def _hold_uid_lock(spool: str, sop_uid: str, locked: Any, release: Any) -> None:
    """In another process: hold ``sop_uid``'s lock until ``release`` is set."""
    with UidLocks(Path(spool)).hold(sop_uid):
        locked.set()
        release.wait(60)


def test_a_store_waits_while_another_process_stores_the_same_uid(
    shared_data: Path, session_factory: Any, tmp_path: Path
) -> None:
    """The check that decides whether a failed commit may remove the file is exact
    across the node's SCP processes, not only across threads."""
    spool = tmp_path / "spool"
    spool.mkdir()
    received = received_instance(shared_data / CHEST)
    context = multiprocessing.get_context("spawn")
    locked, release = context.Event(), context.Event()
    holder = context.Process(
        target=_hold_uid_lock, args=(str(spool), received.sop_instance_uid, locked, release)
    )
    holder.start()
    try:
        assert locked.wait(60)
        results: list[Any] = []
        store = threading.Thread(
            target=lambda: results.append(SpoolSink(spool, session_factory, 0).store(received))
        )
        store.start()
        store.join(0.5)
        assert store.is_alive(), "the store did not wait for the other process's lock"
        assert count_instances(session_factory) == 0
        release.set()
        store.join(30)
        assert results and results[0].ok
        assert count_instances(session_factory) == 1
    finally:
        release.set()
        holder.join(10)
