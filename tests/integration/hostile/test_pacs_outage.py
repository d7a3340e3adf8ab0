"""SR delivery through a long PACS outage, against ``triage-node serve`` and a dcmtk
storescp PACS (issue 13, point 7).

Real minutes are not waited for: the schedule is scaled by settings (backoff cap 1 s
instead of 600 s, horizon in seconds instead of 72 h), and
``tests/unit/triage/test_delivery_schedule.py`` proves that the default schedule
covers a 10-minute outage and 72 hours at most 10 minutes apart.

- An outage 12 times the backoff cap (the 10-minute outage at the default cap of 10
  minutes is 1x; the old schedule gave up after 8 tries, about 5 s here): the SR is
  delivered once the PACS is back.
- An outage past the horizon: the row is ``failed``, the metric and the worklist
  banner say so, and ``triage-node resend`` (audited) delivers it.
"""

from __future__ import annotations

import http.client
import re
import sqlite3
import subprocess
import time
import urllib.parse
from pathlib import Path

import pydicom

from tests.conftest import wait_until
from tests.integration.deploy.helpers import TRIAGE_NODE, chest_copies
from tests.integration.hostile.conftest import PASSWORD
from tests.integration.reliability.conftest import UniquePacs
from tests.integration.scp.helpers import DCMTK_TIMEOUT_S

CHEST = Path("dicom") / "real" / "fuji_CR_chest_from_fodicom_withmeta.dcm"
SCALED = {"delivery_backoff_seconds": 0.2, "delivery_backoff_max_seconds": 1, "sweep_seconds": 0.2}


def _send_study(node, shared_data: Path, tmp_path: Path) -> str:
    (path,) = chest_copies(shared_data / CHEST, tmp_path / "study", 1, size=128)
    out = subprocess.run(
        ["/usr/bin/storescu", "-aec", "TRIAGE", "-xe", "127.0.0.1", str(node.dicom_port),
         str(path)],
        capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _delivery(node) -> tuple[str, int] | None:
    db = sqlite3.connect(node.data_dir / "triage.db")
    try:
        return db.execute("SELECT state, attempts FROM deliveries ORDER BY id").fetchone()
    finally:
        db.close()


def test_an_sr_reaches_a_pacs_after_an_outage_of_12_backoff_caps(
    serve_node, shared_data: Path, tmp_path: Path
) -> None:
    pacs = UniquePacs(tmp_path / "pacs", tmp_path / "logs")  # not started: the outage
    node = serve_node(destinations=pacs.destination, delivery_retry_hours=0.05, **SCALED)
    _send_study(node, shared_data, tmp_path)
    wait_until(lambda: (_delivery(node) or ("", 0))[1] >= 1, timeout=120, what="a first try")
    outage_end = time.monotonic() + 12.0
    while time.monotonic() < outage_end:
        state, _attempts = _delivery(node)
        assert state in ("pending", "sending"), f"gave up during the outage: {_delivery(node)}"
        time.sleep(0.5)
    pacs.start()
    try:
        wait_until(lambda: pacs.count() >= 1, timeout=30, what="the SR at the PACS")
        wait_until(lambda: _delivery(node)[0] == "delivered", timeout=10, what="delivered")
        state, attempts = _delivery(node)
        assert attempts > 8, attempts  # the old schedule stopped at 8
        print(f"\ndelivered after a 12 s outage (cap 1 s) on try {attempts}")
    finally:
        pacs.stop()


def _login_cookie(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/login",
        body=urllib.parse.urlencode({"username": "rad", "password": PASSWORD}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    response = conn.getresponse()
    response.read()
    assert response.status == 303
    cookie = response.getheader("Set-Cookie")
    conn.close()
    return cookie.split(";", 1)[0]


def _page(port: int, cookie: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/", headers={"Cookie": cookie})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 200
    return body


def test_past_the_horizon_it_is_failed_alerted_and_resent(
    serve_node, shared_data: Path, tmp_path: Path
) -> None:
    pacs = UniquePacs(tmp_path / "pacs", tmp_path / "logs")
    node = serve_node(destinations=pacs.destination, delivery_retry_hours=3 / 3600, **SCALED)
    study_uid = _send_study(node, shared_data, tmp_path)
    wait_until(lambda: (_delivery(node) or ("", 0))[0] == "failed", timeout=120, what="failed")
    # Alerted: the metric and the worklist banner.
    status, metrics, _ = node.get("/metrics")
    assert status == 200
    assert re.search(rb'^triage_deliveries\{state="failed"\} 1\.0$', metrics, re.M), metrics
    cookie = _login_cookie(node.http_port)
    assert "could not be sent to the PACS" in _page(node.http_port, cookie)
    # Re-queued by the CLI once the PACS is back; audited.
    pacs.start()
    try:
        env = node.proc.env
        wrong = subprocess.run(
            [str(TRIAGE_NODE), "resend", study_uid, "--destination", "OTHER"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert wrong.returncode == 1 and "no failed SR or heatmap delivery" in wrong.stderr
        out = subprocess.run(
            [str(TRIAGE_NODE), "resend", study_uid, "--destination", "PACS"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "re-queued delivery" in out.stdout
        wait_until(lambda: pacs.count() >= 1, timeout=30, what="the resent SR at the PACS")
        wait_until(lambda: _delivery(node)[0] == "delivered", timeout=10, what="delivered")
        assert "could not be sent to the PACS" not in _page(node.http_port, cookie)
        db = sqlite3.connect(node.data_dir / "triage.db")
        try:
            audited = db.execute(
                "SELECT username, study_instance_uid FROM audit_events WHERE action = 'resend_sr'"
            ).fetchall()
        finally:
            db.close()
        assert len(audited) == 1 and audited[0][0].startswith("cli:")
        assert audited[0][1] == study_uid
    finally:
        pacs.stop()
