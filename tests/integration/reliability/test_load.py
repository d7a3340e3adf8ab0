"""Load: four concurrent storescu associations send 2,000 instances (200 studies of 10
small 16-bit chest radiographs) to the node running as separate processes (scp, an
inference worker with two pool processes, a delivery worker) on PostgreSQL and
Redis. Every instance is stored once, every study is triaged once, every SR reaches
the PACS once; the throughput is printed. The logs of the whole run are then scanned
for the patient's name and ID (PHI is never written at INFO)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.integration.reliability.helpers import (
    PATIENT_ID,
    PATIENT_NAME,
    make_studies,
    send,
    wait_exactly_once,
)
from worklist.db import make_engine
from worklist.tables import Instance

pytestmark = [pytest.mark.postgres]

N_STUDIES = 200
PER_STUDY = 10
SENDERS = 4


def test_four_senders_2000_instances_all_triaged_once(
    tmp_path: Path, shared_data: Path, postgres_url: str, private_redis, make_cluster
) -> None:
    studies = make_studies(shared_data, tmp_path / "send", N_STUDIES, PER_STUDY, size=128)
    cluster = make_cluster(postgres_url, private_redis.url)
    cluster.start_worker("inference", concurrency=2)
    cluster.start_worker("delivery", concurrency=4)
    cluster.start_scp()

    # Each sender gets a quarter of the studies, in order, on one association.
    shares = [studies[i::SENDERS] for i in range(SENDERS)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        outs = list(
            pool.map(
                lambda share: send(cluster.dicom_port, [f for s in share for f in s.files]),
                shares,
            )
        )
    ingest_s = time.monotonic() - started
    for out in outs:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(Instance))
            received = conn.scalar(select(func.sum(Instance.receive_count)))
    finally:
        engine.dispose()
    n = N_STUDIES * PER_STUDY
    assert stored == n and received == n
    spooled = [p for p in cluster.spool.rglob("*") if p.is_file()]
    assert len(spooled) == n

    outcome = wait_exactly_once(postgres_url, cluster.pacs, studies, timeout=300, started=started)
    assert outcome.results == N_STUDIES
    assert all(revs == [1] for revs in outcome.revisions.values())
    print(
        f"\nload: {n} instances in {N_STUDIES} studies over {SENDERS} associations: "
        f"stored in {ingest_s:.1f} s ({n / ingest_s:.0f} instances/s); all {N_STUDIES} "
        f"studies triaged and their SRs at the PACS {outcome.seconds:.1f} s after the "
        f"first byte ({n / outcome.seconds:.0f} instances/s, "
        f"{N_STUDIES / outcome.seconds:.1f} studies/s end to end)"
    )

    # PHI: neither the patient's name (in any spelling) nor the ID in any log.
    logs = cluster.all_logs()
    assert "stored new instance" in logs and "triaged" in logs  # INFO lines are there
    for secret in (PATIENT_ID, PATIENT_NAME, *PATIENT_NAME.split("^")):
        assert secret not in logs, f"{secret!r} written to a log"
