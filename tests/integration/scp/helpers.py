"""Helpers for the SCP's network tests: dcmtk and pynetdicom as senders, a recording
triage queue, row counts."""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from sqlalchemy import func, select

from dicom_scp.sink import ReceivedInstance
from worklist.tables import Instance

# storescu option that proposes exactly a file's own transfer syntax (plus the
# uncompressed ones), so that the file is sent as it is, never converted.
STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}

DCMTK_TIMEOUT_S = 120


def need_dcmtk() -> None:
    """Skip when the dcmtk binaries are not installed."""
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            pytest.skip(f"dcmtk {tool} not installed")


def transfer_syntax_of(path: Path) -> str:
    """The transfer syntax a Part 10 file is stored in."""
    return str(read_file_meta_info(path).TransferSyntaxUID)


def storescu(
    port: int,
    files: list[Path],
    *options: str,
    calling: str = "STORESCU",
    called: str = "TRIAGE",
    host: str = "127.0.0.1",
    tls: list[Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with dcmtk storescu (``-nh``: go on after a failure)."""
    cmd = ["storescu", "-v", "-nh", "-aet", calling, "-aec", called, "-to", "10"]
    cmd += [*map(str, tls or []), *options, host, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, check=False)


def storescu_as_is(port: int, path: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Send one file with storescu proposing the file's own transfer syntax."""
    option = STORESCU_TS_OPTION[transfer_syntax_of(path)]
    return storescu(port, [path], option, **kwargs)


def echoscu(port: int, *options: str, calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    """C-ECHO with dcmtk echoscu."""
    cmd = ["echoscu", "-aet", calling, "-aec", "TRIAGE", "-to", "10", *options]
    cmd += ["127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def pyscu_store(
    port: int,
    data: Path | Dataset,
    *,
    sop_class: str | None = None,
    transfer_syntax: str | None = None,
    calling: str = "PYSCU",
) -> int | None:
    """C-STORE one instance with pynetdicom; a path is sent as its raw bytes.

    Returns the status, or None when no association/context could carry it.
    """
    if isinstance(data, Path):
        meta = read_file_meta_info(data)
        sop_class = sop_class or str(meta.MediaStorageSOPClassUID)
        transfer_syntax = transfer_syntax or str(meta.TransferSyntaxUID)
    assert sop_class and transfer_syntax
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    if not assoc.is_established:
        return None
    try:
        if not assoc.accepted_contexts:
            return None
        status = assoc.send_c_store(data if isinstance(data, Dataset) else str(data))
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def pyscu_echo(port: int, calling: str = "PYSCU") -> int | None:
    """C-ECHO with pynetdicom; returns the status or None."""
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


@dataclass
class RecordingQueue:
    """A TriageQueue that records what it is given."""

    enqueued: list[tuple[int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enqueue(self, study_id: int, revision: int) -> None:
        with self.lock:
            self.enqueued.append((study_id, revision))

    def snapshot(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.enqueued)


def count_instances(session_factory: Any, sop_uid: str | None = None) -> int:
    """Rows in ``instances`` (for one SOP Instance UID when given)."""
    with session_factory() as session:
        query = select(func.count()).select_from(Instance)
        if sop_uid is not None:
            query = query.where(Instance.sop_instance_uid == sop_uid)
        return int(session.scalar(query) or 0)


def received_instance(path: Path, calling_ae: str = "TEST") -> ReceivedInstance:
    """``path`` as the SCP hands it to the sink (in memory), from ``calling_ae``."""
    ds = dcmread(path, stop_before_pixels=True)
    return ReceivedInstance(
        encoded=path.read_bytes(),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        calling_ae=calling_ae,
        peer_address="127.0.0.1",
    )


def sendable_torture_files(shared_data: Path) -> list[Path]:
    """Torture files that carry File Meta, so an SCU can propose a context for them."""
    files = []
    for path in sorted((shared_data / "dicom" / "torture").iterdir()):
        try:
            meta = read_file_meta_info(path)
        except Exception:  # noqa: BLE001, S112 - no File Meta: no SCU can send it as is
            continue
        if "MediaStorageSOPClassUID" in meta and "TransferSyntaxUID" in meta:
            files.append(path)
    return files
