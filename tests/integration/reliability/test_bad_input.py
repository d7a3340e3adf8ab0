"""Bad input through the whole node (``triage-node scp`` and workers as processes):
the torture files of ../shared/data/dicom/torture and generated ones each get a
clear failure status, or are stored and end in a result, ``not_evaluated`` with a
reason when nothing in them can be scored. Neither the SCP nor a worker crashes or
hangs: every process is still up, no claim needed a second attempt, and a good
study sent last is triaged and delivered."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, RLELossless, generate_uid
from sqlalchemy import select

from tests.conftest import wait_until
from tests.integration.reliability.helpers import (
    CHEST,
    make_studies,
    send,
    wait_all_srs_once,
    wait_exactly_once,
)
from tests.integration.scp.helpers import pyscu_echo, pyscu_store, sendable_torture_files
from worklist.core.db import make_engine
from worklist.tables import Instance, Study, TriageClaim, TriageImage, TriageResult

pytestmark = [pytest.mark.postgres]

FAILURE = {0xA700, 0xA900, 0x0110, 0x0122} | set(range(0xC000, 0xD000))


def _base(shared_data: Path, size: int = 64) -> Dataset:
    ds = pydicom.dcmread(shared_data / CHEST)
    px = ds.pixel_array[:: 440 // size, :: 440 // size].astype(np.uint16)
    ds.PixelData = px.tobytes()
    ds.Rows, ds.Columns = px.shape
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _truncated(ds: Dataset) -> bytes:
    data = _bytes(ds)
    return data[: len(data) - 1000]


def _wrong_vr(ds: Dataset) -> bytes:
    del ds.Rows
    ds.add_new(0x00280010, "DS", "64.5")  # Rows as a decimal string
    return _bytes(ds)


def _missing_series(ds: Dataset) -> bytes:
    del ds.SeriesInstanceUID
    return _bytes(ds)


def _missing_sop(ds: Dataset) -> bytes:
    del ds.SOPInstanceUID
    return _bytes(ds)


def _absurd(ds: Dataset) -> bytes:
    ds.Rows = ds.Columns = 65535
    return _bytes(ds)


def _zero_size(ds: Dataset) -> bytes:
    ds.Rows = ds.Columns = 0
    return _bytes(ds)


def _corrupt_rle(ds: Dataset) -> bytes:
    ds.compress(RLELossless)
    data = bytearray(_bytes(ds))
    start = len(data) - (len(ds.PixelData) - 100)
    rng = np.random.default_rng(1)
    data[start : len(data) - 16] = rng.integers(0, 256, len(data) - 16 - start, np.uint8).tobytes()
    return bytes(data)


def _multiframe(ds: Dataset) -> bytes:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return _bytes(ds)


def _colour(ds: Dataset) -> bytes:
    px = np.repeat((ds.pixel_array >> 2).astype(np.uint8)[..., None], 3, axis=2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = px.tobytes()
    return _bytes(ds)


def _other_sop_class(ds: Dataset) -> bytes:
    """A CR dataset whose File Meta (hence the negotiated context) says CT."""
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=False)  # keep the File Meta as set
    return buffer.getvalue()


def _pixels_short(ds: Dataset) -> bytes:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return _bytes(ds)


#: name -> (make bytes, SOP class to send on (None: the file's), what must happen):
#: "refused" (a failure status), "not_evaluated" (stored, a reason recorded),
#: "stored" (stored; any final result).
CASES: dict[str, tuple[Callable[[Dataset], bytes], str | None, str]] = {
    "truncated": (_truncated, None, "refused"),
    "wrong_vr_rows": (_wrong_vr, None, "stored"),
    "missing_series_uid": (_missing_series, None, "refused"),
    "missing_sop_uid": (_missing_sop, None, "refused"),
    "absurd_dimensions": (_absurd, None, "not_evaluated"),
    "zero_dimensions": (_zero_size, None, "not_evaluated"),
    "pixel_data_short": (_pixels_short, None, "not_evaluated"),
    "corrupt_rle": (_corrupt_rle, None, "stored"),
    "sop_class_not_negotiated": (_other_sop_class, None, "refused"),
    "multiframe": (_multiframe, None, "not_evaluated"),
    "colour": (_colour, None, "not_evaluated"),
}


def _study_uid(path: Path) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).StudyInstanceUID)
    except Exception:  # noqa: BLE001 - unreadable: no study to look for
        return None


@pytest.fixture
def raw_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's dataset bytes as they are (no decode, no re-encode),
    the way a faulty modality would send them."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_bad_input_end_to_end(
    tmp_path: Path,
    shared_data: Path,
    postgres_url: str,
    private_redis: Any,
    make_cluster: Any,
    raw_sending: None,
) -> None:
    cluster = make_cluster(postgres_url, private_redis.url)
    cluster.start_worker("inference")
    cluster.start_worker("delivery")
    cluster.start_scp()
    port = cluster.dicom_port

    statuses: dict[str, int | None] = {}
    files: dict[str, Path] = {}
    for name, (make, sop_class, _) in CASES.items():
        path = tmp_path / "bad" / f"{name}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(make(_base(shared_data)))
        files[name] = path
        meta = read_file_meta_info(path)
        statuses[name] = pyscu_store(
            port,
            path,
            sop_class=sop_class or str(meta.MediaStorageSOPClassUID),
            transfer_syntax=str(meta.TransferSyntaxUID),
        )
        assert pyscu_echo(port) == 0x0000, f"SCP not answering after {name}"
    # Duplicate UIDs: the same SOP Instance UID twice with different pixels.
    dup = _base(shared_data)
    first = tmp_path / "bad" / "dup-a.dcm"
    first.write_bytes(_bytes(dup))
    dup.PixelData = bytes(len(dup.PixelData))
    second = tmp_path / "bad" / "dup-b.dcm"
    second.write_bytes(_bytes(dup))
    statuses["duplicate_sop_uid"] = pyscu_store(port, first)
    assert pyscu_store(port, second) == 0x0000
    files["duplicate_sop_uid"] = first
    for path in sendable_torture_files(shared_data):
        try:
            statuses[f"torture/{path.name}"] = pyscu_store(port, path)
        except Exception:  # noqa: BLE001, S112 - pynetdicom as SCU refuses some files itself
            continue
        files[f"torture/{path.name}"] = path
        assert pyscu_echo(port) == 0x0000, f"SCP not answering after {path.name}"

    for name, (_, _, expect) in CASES.items():
        status = statuses[name]
        if expect == "refused":
            assert status in FAILURE, f"{name}: {status}"
        else:
            assert status == 0x0000, f"{name}: {status}"
    assert all(s in FAILURE | {0x0000, None} for s in statuses.values()), statuses

    stored = {n: _study_uid(files[n]) for n, s in statuses.items() if s == 0x0000}
    assert None not in stored.values()
    good = make_studies(shared_data, tmp_path / "good", 1, 2)
    assert send(port, list(good[0].files)).returncode == 0
    engine = make_engine(postgres_url)
    try:

        def results() -> dict[str, Any] | None:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(Study.study_instance_uid, TriageResult.status, TriageResult.reason)
                    .join(
                        TriageResult,
                        (TriageResult.study_id == Study.id)
                        & (TriageResult.revision == Study.revision),
                    )
                    .where(Study.study_instance_uid.in_(set(stored.values())))
                ).all()
            found = {uid: (status, reason) for uid, status, reason in rows}
            return found if len(found) == len(set(stored.values())) else None

        found = wait_until(results, timeout=120, interval=0.3, what="a result for every study")
        with engine.connect() as conn:
            image_reasons = dict(
                conn.execute(
                    select(TriageImage.sop_instance_uid, TriageImage.reason).where(
                        TriageImage.evaluated.is_(False)
                    )
                ).all()
            )
            attempts = conn.scalars(select(TriageClaim.attempts)).all()
            dup_rows = conn.scalars(
                select(Instance.receive_count).where(
                    Instance.sop_instance_uid == str(dup.SOPInstanceUID)
                )
            ).all()
    finally:
        engine.dispose()
    wait_exactly_once(postgres_url, cluster.pacs, good, timeout=60, only=False)
    n_srs = wait_all_srs_once(postgres_url, cluster.pacs)

    outcome = {}
    for name, uid in stored.items():
        status, reason = found[uid]
        outcome[name] = (status, reason)
        assert status in ("triaged", "not_evaluated"), (name, status, reason)
        if status == "not_evaluated":
            assert reason, name
    for name, (_, _, expect) in CASES.items():
        if expect == "not_evaluated":
            assert outcome[name][0] == "not_evaluated", (name, outcome[name])
    assert outcome["corrupt_rle"] == ("not_evaluated", outcome["corrupt_rle"][1])
    assert "cannot_decode" in (outcome["corrupt_rle"][1] or "")
    assert all(reason for reason in image_reasons.values())
    assert dup_rows == [2]
    assert all(a == 1 for a in attempts), "a worker died on an input (claim re-attempted)"
    for proc in cluster.procs.values():
        assert proc.running(), f"{proc.name} is down:\n{proc.tail()}"
    print(
        f"\n{len(statuses)} bad inputs, {n_srs} SRs each delivered once:\n"
        + "\n".join(
            f"  {name}: "
            + (f"0x{s:04X}" if s is not None else "no context")
            + (
                f" -> {outcome[name][0]}: {(outcome[name][1] or '')[:90]}"
                if name in outcome
                else ""
            )
            for name, s in statuses.items()
        )
    )
