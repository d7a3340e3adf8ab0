"""Live time-to-read on the API, the monitoring page and /metrics (seeded worklist)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import PASSWORD, bearer
from tests.unit.api.factories import Made


def test_time_to_read_api_page_and_metrics(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    rad1 = bearer(users["rad1"])
    uid = seeded["abnormal_high"].study.study_instance_uid  # arrived 2 min ago
    assert client.post(f"/api/studies/{uid}/claim", headers=rad1).status_code == 200
    assert client.post(f"/api/studies/{uid}/complete", headers=rad1).status_code == 200

    report = client.get("/api/monitoring/time-to-read", params={"days": 7}, headers=rad1).json()
    assert report["wait_cap_seconds"] == 3600
    assert set(report["by_level"]) == {"ABNORMAL_HIGH"}
    read = report["by_level"]["ABNORMAL_HIGH"]
    assert read["n"] == 1 and read["p50"] == pytest.approx(120, abs=30)
    assert report["by_truth"] == {}  # nobody labelled it yet
    # Five unopened studies; the "overdue" one waited 90 min, over the 60-min cap.
    assert report["waiting"]["unread"] == 5
    assert report["waiting"]["longest_wait_seconds"] == pytest.approx(90 * 60, abs=60)
    assert report["waiting"]["over_cap"] == 1
    assert sum(d["arrived"] for d in report["daily"]) == 6
    assert (
        client.get("/api/monitoring/time-to-read", params={"days": 0}, headers=rad1).status_code
        == 422
    )

    metrics = client.get("/metrics").text
    assert 'triage_read_over_cap{scope="waiting"} 1.0' in metrics
    assert 'triage_turnaround_studies{group="level",value="ABNORMAL_HIGH"} 1.0' in metrics

    signed_in = client.post(
        "/login", data={"username": "rad1", "password": PASSWORD}, follow_redirects=False
    )
    assert signed_in.status_code == 303
    page = client.get("/monitoring")
    assert page.status_code == 200
    assert "Time to read" in page.text and 'id="turnaround"' in page.text
    assert "over the cap: 1." in page.text
