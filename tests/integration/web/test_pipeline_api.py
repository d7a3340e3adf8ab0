"""The API over real triage results: dcmtk storescu -> node (SCP, embedded workers,
ONNX model) -> SR at a dcmtk PACS; then the worklist, study detail, thumbnails of the
real (compressed) radiographs, feedback and metrics through the HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from tests.conftest import REPO_ROOT
from tests.integration.scp.helpers import storescu_as_is
from tests.integration.triage.conftest import (  # noqa: F401 - fixtures
    FAST_OPTIONS,
    labelled_dx,
    pacs,
    tiny_model,
)
from tests.integration.triage.test_end_to_end import (
    REAL,
    default_or_tiny,
    make_node_settings,
    start_scp,
    wait_for_results,
)
from worklist.accounts import create_token, create_user
from worklist.http.app import create_app

ARTIFACTS = REPO_ROOT / "test-artifacts"


def test_api_over_real_triage_results(
    tmp_path: Path,
    shared_data: Path,
    pacs: Any,  # noqa: F811
    tiny_model: Path,  # noqa: F811
    labelled_dx: Any,  # noqa: F811
) -> None:
    from triage.worker import start_embedded_worker

    settings = make_node_settings(
        tmp_path,
        default_or_tiny(tiny_model),
        pacs.destination,
        session_secret="pipeline-test-secret-0123456789",
        viewer_url_template="http://orthanc.test:8042/ohif/viewer?StudyInstanceUIDs={study_uid}",
    )
    node = start_scp(settings)
    embedded = start_embedded_worker(settings, extra_env=FAST_OPTIONS)
    node.workers.extend(embedded.processes.values())
    try:
        lateral = shared_data / REAL / "fujifilm_DX_thorax_lateral_veterinary.dcm"
        files = [
            shared_data / REAL / "RG1_J2KI.dcm",
            shared_data / REAL / "konica_CR_chest_Monochrome1-Jpeg.dcm",
            *labelled_dx("abnormal", 2),
            *labelled_dx("normal", 2),
            lateral,
        ]
        for path in files:
            out = storescu_as_is(settings.dicom_port, path)
            assert out.returncode == 0, out.stderr
        uids = [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files]
        results = wait_for_results(node, uids, timeout=180)

        with node.session_factory() as session:
            create_user(session, username="rad", password="pipeline passphrase", role="radiologist")
            token, _row = create_token(session, username="rad", name="test")
            session.commit()
        auth = {"Authorization": f"Bearer {token}"}
        with TestClient(create_app(settings, node.session_factory)) as client:
            rows = client.get("/api/worklist", headers=auth).json()
            assert {r["study_instance_uid"] for r in rows} == set(uids)
            keys = [(r["priority"], r["received_at"]) for r in rows]
            assert keys == sorted(keys)
            for row in rows:
                result = results[row["study_instance_uid"]]
                assert row["stored_priority"] == result.priority
                assert row["decision"] == result.decision
                assert row["probability"] == result.probability

            lateral_uid = uids[-1]
            detail = client.get(f"/api/studies/{lateral_uid}", headers=auth).json()
            assert detail["result"]["status"] == "not_evaluated"
            assert detail["row"]["priority_label"] == "Not evaluated"
            assert [i["evaluated"] for i in detail["images"]] == [False]
            assert detail["images"][0]["reason"]

            for uid in uids[:2]:  # JPEG 2000 and JPEG (MONOCHROME1) radiographs
                detail = client.get(f"/api/studies/{uid}", headers=auth).json()
                assert detail["result"]["model"]["sha256"] == results[uid].model_sha256
                assert detail["result"]["delivery_state"] == "delivered"
                assert detail["viewer_url"].endswith(uid)
                evaluated = [i for i in detail["images"] if i["evaluated"]]
                assert evaluated and all(0 <= i["probability"] <= 1 for i in evaluated)
                png = client.get(
                    f"/api/studies/{uid}/images/{evaluated[0]['sop_instance_uid']}/thumbnail",
                    headers=auth,
                )
                assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / f"thumbnail-{uids.index(uid)}.png").write_bytes(png.content)
                decision = results[uid].decision
                saved = client.post(
                    f"/api/studies/{uid}/feedback", json={"label": decision}, headers=auth
                ).json()
                assert saved["agree"] is True

            metrics = client.get("/metrics").text
            assert f"triage_time_to_triage_seconds_count {float(len(uids))}" in metrics
            assert f"triage_instances_received_total {float(len(uids))}" in metrics
            assert "triage_feedback_total 2.0" in metrics
            assert 'triage_feedback_agreement_ratio{group="overall",value="all"} 1.0' in metrics
            ready = client.get("/readyz").json()
            assert ready["status"] == "ok", ready
    finally:
        node.stop()
