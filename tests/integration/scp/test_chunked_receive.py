"""Receiving into files (pynetdicom's chunked receive): same spool files as in memory."""

from __future__ import annotations

import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import _config
from sqlalchemy import select

from dicom_scp.server import start_node_scp
from dicom_scp.sink import incoming_dir
from tests.conftest import free_port
from tests.integration.scp.helpers import RecordingQueue, pyscu_store
from worklist.tables import Instance


def _store_all(
    settings: Any, session_factory: Any, files: list[Path], *, into_files: bool
) -> dict[str, bytes]:
    node = start_node_scp(
        settings, session_factory, queue=RecordingQueue(), receive_into_files=into_files
    )
    try:
        assert _config.STORE_RECV_CHUNKED_DATASET is into_files
        for path in files:
            assert pyscu_store(settings.dicom_port, path) == 0x0000, path.name
    finally:
        node.stop()
    with session_factory() as session:
        rows = session.scalars(select(Instance)).all()
        return {r.sop_instance_uid: Path(r.file_path).read_bytes() for r in rows}


def test_files_received_into_files_equal_those_received_in_memory(
    shared_data: Path, make_settings: Any, session_factory: Any, tmp_path: Path
) -> None:
    """Preamble, File Meta (negotiated transfer syntax) and dataset: byte for byte."""
    files = sorted((shared_data / "dicom" / "real").glob("*.dcm"))
    flag, tempdir = _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir
    in_memory = _store_all(
        make_settings(data_dir=tmp_path / "memory"), session_factory, files, into_files=False
    )
    settings = make_settings(data_dir=tmp_path / "files", dicom_port=free_port())
    in_files = _store_all(settings, session_factory, files, into_files=True)
    # stop() puts pynetdicom's and tempfile's settings back.
    assert (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir) == (flag, tempdir)
    assert in_files.keys() == in_memory.keys() and len(in_files) >= 5
    for sop_uid, data in in_files.items():
        assert data == in_memory[sop_uid], sop_uid
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        stored = in_files[str(meta.MediaStorageSOPInstanceUID)]
        assert dcmread(BytesIO(stored)).file_meta.TransferSyntaxUID == (meta.TransferSyntaxUID)
    # Nothing left where the datasets were received.
    assert list(incoming_dir(settings.spool_dir.absolute()).iterdir()) == []
