"""Scaled out on one machine, as deploy/README.md and README.md "Scaled out" describe:
``triage-node db upgrade``, then ``scp``, ``api``, two ``worker --queues inference``
and one ``worker --queues delivery`` as separate processes against Redis and
PostgreSQL, with a dcmtk storescp as the PACS. Eight chest radiographs (eight
studies) go in; both inference workers take a share, and every SR reaches the PACS
exactly once."""

from __future__ import annotations

import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import Row, create_engine, select

from tests.conftest import free_port, wait_until
from tests.integration.deploy.helpers import (
    Proc,
    chest_copies,
    echo,
    http_ok,
    need_tools,
    node_env,
    run_triage_node,
    triage_node,
)
from tests.integration.scp.helpers import storescu
from worklist.tables import Delivery, Study, TriageClaim, TriageResult

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: A Redis database of its own, emptied before and after the test.
REDIS_DB_URL = "redis://127.0.0.1:6379/7"
N_STUDIES = 8
SR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
}
#: How long the PACS must stay at the expected count after the last delivery (a few
#: sweep periods of FAST_OPTIONS), so that a late duplicate would be seen.
QUIET_AFTER_DELIVERY_S = 3.0


@pytest.fixture
def redis_db() -> Iterator[str]:
    """``REDIS_DB_URL``, flushed before and after the test."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("Redis is not running at 127.0.0.1:6379 in CI")
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    import redis

    client = redis.Redis.from_url(REDIS_DB_URL)
    client.flushdb()
    try:
        yield REDIS_DB_URL
    finally:
        client.flushdb()
        client.close()


class _Pacs:
    """dcmtk storescp with unique file names, so that a duplicate C-STORE of the same
    SOP instance shows up as a second file instead of overwriting the first."""

    def __init__(self, directory: Path, logs: Path) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True)
        self.proc = Proc(
            "storescp",
            ["storescp", "-v", "-aet", "PACS", "+xa", "+uf", "-od", str(directory), str(self.port)],
            dict(os.environ),
            logs / "storescp.log",
        )

    def start(self) -> _Pacs:
        self.proc.start()
        wait_until(lambda: echo(self.port, "PACS"), timeout=20, what="storescp C-ECHO")
        return self

    def datasets(self) -> list[pydicom.Dataset]:
        out = []
        for path in sorted(self.directory.iterdir()):
            if path.is_file():
                out.append(pydicom.dcmread(path, stop_before_pixels=True))
        return out

    def count(self) -> int:
        return sum(1 for p in self.directory.iterdir() if p.is_file())


def _parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (Linux /proc), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _worker_of_claim(claimed_by: str, workers: dict[int, str]) -> str | None:
    """The name of the ``triage-node worker`` whose pool process made a claim
    (``claimed_by`` is ``host:pid`` of that pool process)."""
    pid = int(claimed_by.rsplit(":", 1)[1])
    if pid in workers:
        return workers[pid]
    return workers.get(_parent_pid(pid) or -1)


def test_scaled_out_two_inference_workers(
    tmp_path: Path, shared_data: Path, postgres_url: str, redis_db: str
) -> None:
    need_tools("storescu", "storescp", "echoscu")
    logs = tmp_path / "logs"
    pacs = _Pacs(tmp_path / "pacs", logs)
    dicom_port, http_port = free_port(), free_port()
    env = node_env(
        data_dir=tmp_path / "spool-shared",
        database_url=postgres_url,
        broker_url=redis_db,
        dicom_host="127.0.0.1",
        dicom_port=dicom_port,
        http_host="127.0.0.1",
        http_port=http_port,
        stable_seconds=1,
        stability_poll_seconds=0.2,
        min_free_mb=0,
        destinations=f"PACS@127.0.0.1:{pacs.port}",
        # one study a task: a batch could take all eight into one worker (the batch
        # path under two pool processes is tests/integration/reliability/test_load.py)
        inference_batch_studies=1,
    )
    files = chest_copies(
        shared_data / "dicom" / "real" / "RG1_from_J2KI_explicit.dcm", tmp_path / "send", N_STUDIES
    )
    sent = {
        str(ds.StudyInstanceUID): str(ds.SOPInstanceUID)
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in files)
    }

    procs: list[Proc] = [pacs.proc]
    try:
        pacs.start()
        run_triage_node(["db", "upgrade"], env)
        inference = [
            triage_node(f"inference-{i}", ["worker", "--queues", "inference"], env, logs)
            for i in (1, 2)
        ]
        delivery = triage_node("delivery", ["worker", "--queues", "delivery"], env, logs)
        scp = triage_node("scp", ["scp"], env, logs)
        api = triage_node("api", ["api"], env, logs)
        procs += [*inference, delivery, scp, api]

        def all_up() -> bool:
            down = [p.name for p in procs if not p.running()]
            if down:
                pytest.fail(f"{', '.join(down)} exited early")
            return (
                all(re.search(r"\bready\.", w.log()) for w in [*inference, delivery])
                and echo(dicom_port)
                and http_ok(f"http://127.0.0.1:{http_port}/healthz")
            )

        wait_until(all_up, timeout=90, interval=0.3, what="scp, api and the three workers")

        started = time.monotonic()
        out = storescu(dicom_port, files, "-xe")
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(
            lambda: pacs.count() >= N_STUDIES,
            timeout=180,
            interval=0.2,
            what=f"{N_STUDIES} SRs at the PACS",
        )
        elapsed = time.monotonic() - started

        engine = create_engine(postgres_url)
        try:

            def all_delivered() -> Sequence[Row[Any]] | None:
                with engine.connect() as conn:
                    rows = conn.execute(
                        select(
                            Study.study_instance_uid,
                            Study.id,
                            TriageResult.revision,
                            Delivery.state,
                            Delivery.attempts,
                            Delivery.sop_instance_uid,
                            Delivery.delivered_at,
                            TriageResult.status,
                            TriageResult.sr_sop_instance_uid,
                        )
                        .join(TriageResult, TriageResult.study_id == Study.id)
                        .join(Delivery, Delivery.result_id == TriageResult.id)
                    ).all()
                if len(rows) < N_STUDIES or any(r.state != "delivered" for r in rows):
                    return None
                return rows

            rows = wait_until(
                all_delivered, timeout=30, interval=0.2, what="every delivery row delivered"
            )
            # A late duplicate (a redelivered task, a second sweep) would show up now.
            hold_until = time.monotonic() + QUIET_AFTER_DELIVERY_S
            while time.monotonic() < hold_until:
                assert pacs.count() == N_STUDIES, "more SRs than studies reached the PACS"
                time.sleep(0.2)

            with engine.connect() as conn:
                claims = conn.execute(
                    select(
                        TriageClaim.study_id,
                        TriageClaim.revision,
                        TriageClaim.claimed_by,
                        TriageClaim.attempts,
                    )
                ).all()
        finally:
            engine.dispose()

        # The SRs at the PACS: one per study (every study has revision 1).
        received = pacs.datasets()
        assert all(str(ds.SOPClassUID) in SR_SOP_CLASSES for ds in received)
        assert all(ds.Modality == "SR" for ds in received)
        per_study = Counter(str(ds.StudyInstanceUID) for ds in received)
        assert per_study == {uid: 1 for uid in sent}, per_study
        for ds in received:
            refs = {
                str(ref.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence
            }
            assert refs == {sent[str(ds.StudyInstanceUID)]}
        assert len({str(ds.SOPInstanceUID) for ds in received}) == N_STUDIES

        # The database: one result per study and revision, one delivery row each,
        # delivered at the first attempt, for exactly the SRs the PACS holds.
        assert sorted(r.study_instance_uid for r in rows) == sorted(sent)
        assert Counter((r.id, r.revision) for r in rows) == {(r.id, 1): 1 for r in rows}
        assert all(r.status == "triaged" for r in rows)
        assert all(r.attempts == 1 and r.delivered_at is not None for r in rows)
        assert {r.sop_instance_uid for r in rows} == {str(ds.SOPInstanceUID) for ds in received}
        assert {r.sr_sop_instance_uid for r in rows} == {r.sop_instance_uid for r in rows}

        # Which inference worker triaged each study: the claim names the pool
        # process (host:pid), whose parent is the `triage-node worker` process;
        # each worker's log names the studies it triaged. Both must agree.
        workers = {w.pid: w.name for w in inference}
        by_claim = {c.study_id: _worker_of_claim(c.claimed_by, workers) for c in claims}
        assert len(by_claim) == N_STUDIES and all(c.attempts == 1 for c in claims)
        by_log: dict[int, str] = {}
        for w in inference:
            for match in re.finditer(r"study (\d+) revision 1: triaged", w.log()):
                by_log[int(match[1])] = w.name
        assert by_log == by_claim, (by_log, by_claim)
        share = Counter(by_claim.values())
        assert set(share) == {"inference-1", "inference-2"}, (
            f"studies were not spread across both inference workers: {share}"
        )
        assert not re.search(r"study \d+ revision 1: triaged", delivery.log())
        print(
            f"\n{N_STUDIES} studies: share {dict(share)}, all SRs at the PACS "
            f"{elapsed:.1f} s after the send"
        )
    except BaseException:
        for proc in procs:
            print(proc.tail())
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()
