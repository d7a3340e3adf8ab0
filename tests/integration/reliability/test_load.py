"""Load: four concurrent storescu associations send 2,000 instances (200 studies of 10
small 16-bit chest radiographs) to the node running as separate processes (scp, an
inference worker with two pool processes, a delivery worker) on PostgreSQL and
Redis. Every instance is stored once, every study is triaged once, every SR reaches
the PACS once; the throughput is printed. A study is then viewed over the API (the
patient shows, the access is in the audit trail), and the logs of every process of
the run (scp, workers, api) are scanned for the patient's name and ID: PHI is never
written at INFO."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import free_port, spool_files, wait_until
from tests.integration.deploy.helpers import TRIAGE_NODE, http_ok
from tests.integration.reliability.helpers import (
    PATIENT_ID,
    assert_no_phi,
    make_studies,
    send,
    wait_exactly_once,
)
from worklist.core.db import make_engine
from worklist.tables import Instance

pytestmark = [pytest.mark.postgres]


def _api_token(cluster: Any) -> str:
    """Start ``triage-node api``; create an admin and a bearer token with the CLI."""
    env = cluster.env()
    for argv, stdin in (
        (["user", "add", "auditor", "--role", "admin", "--password-stdin"], "a-long-pass-phrase\n"),
        (["token", "add", "--user", "auditor", "--name", "test", "--no-expiry"], None),
    ):
        out = subprocess.run(
            [str(TRIAGE_NODE), *argv], env=env, input=stdin, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    cluster.start("api", ["api"])
    url = f"http://127.0.0.1:{env['TRIAGE_HTTP_PORT']}/healthz"
    wait_until(lambda: http_ok(url), timeout=60, what="the API")
    return token


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


N_STUDIES = 200
PER_STUDY = 10
SENDERS = 4


def test_four_senders_2000_instances_all_triaged_once(
    tmp_path: Path, shared_data: Path, postgres_url: str, private_redis, make_cluster
) -> None:
    studies = make_studies(shared_data, tmp_path / "send", N_STUDIES, PER_STUDY, size=128)
    cluster = make_cluster(
        postgres_url,
        private_redis.url,
        http_host="127.0.0.1",
        http_port=free_port(),
        inference_batch_studies=8,  # batches across studies, as a GPU worker does
    )
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
    spooled = spool_files(cluster.spool)
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

    # A radiologist's view of a study over the API: it shows the patient (PHI goes
    # through), and the access is in the audit trail.
    token = _api_token(cluster)
    http_port = int(cluster.env()["TRIAGE_HTTP_PORT"])
    api = f"http://127.0.0.1:{http_port}"
    uid = studies[0].study_uid
    detail = _get(f"{api}/api/studies/{uid}", token)
    assert PATIENT_ID in json.dumps(detail)
    events = _get(f"{api}/api/audit?study_uid={uid}", token)
    assert [e["action"] for e in events if e["study_instance_uid"] == uid] == ["view_study"]
    assert events[0]["username"] == "auditor"
    assert PATIENT_ID not in json.dumps(events)

    # PHI: neither the patient's name (in any spelling) nor the ID in any log.
    logs = cluster.all_logs()
    assert "api" in cluster.procs
    assert "stored new instance" in logs and "triaged" in logs  # INFO lines are there
    assert_no_phi(logs)
