"""Receiving a file as the SCP does, without a network: for tests and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["ingest_file"]


def ingest_file(session_factory: Any, path: Path, spool: Path) -> int:
    """Copy a DICOM file into ``spool`` and record it as received; return its study id.

    Parameters
    ----------
    session_factory : sessionmaker
    path : Path
        The DICOM file.
    spool : Path
        Where the SCP would have written it.

    Returns
    -------
    int
        The study's id.
    """
    import pydicom
    from sqlalchemy import select

    from dicom_scp.headers import instance_info_from_dataset
    from worklist.ingest import record_instance
    from worklist.tables import Study

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    spool.mkdir(parents=True, exist_ok=True)
    target = spool / f"{ds.SOPInstanceUID}.dcm"
    shutil.copyfile(path, target)
    info = instance_info_from_dataset(
        ds,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        file_path=str(target),
        size_bytes=target.stat().st_size,
    )
    with session_factory.begin() as session:
        record_instance(session, info=info)
        return int(
            session.scalar(
                select(Study.id).where(Study.study_instance_uid == str(ds.StudyInstanceUID))
            )
        )
