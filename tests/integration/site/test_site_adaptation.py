"""A small site learns: adult radiographs from cxr-nih512 (train split) wrapped as DX
are sent with dcmtk storescu to the node (SCP, embedded workers, the shipped model),
labelled by a radiologist through the API, exported, used to train a new head on the
champion's embedding, registered in shadow, scored beside the champion on new studies,
compared and promoted; the next study's SR and priority come from the new champion,
and a rollback brings the old one back. Every step is a real command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import wait_until
from tests.integration.scp.helpers import storescu
from tests.integration.site.helpers import node_cli
from tests.integration.triage.conftest import FAST_OPTIONS, pacs  # noqa: F401 - fixture
from tests.integration.triage.test_end_to_end import (
    check_sr_matches_database,
    make_node_settings,
    start_scp,
    wait_for_results,
)
from tests.support.dx import wrap_image_as_dx
from worklist.tables import ShadowResult, Study

PHASE1 = 20  # per class: the labelled studies that become the site's dataset
PHASE2 = 6  # per class: new studies scored by champion and shadow, then labelled


def _rows(shared_data: Path) -> dict[str, list[dict[str, str]]]:
    with (shared_data / "cxr-nih512" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    return {label: [r for r in rows if r["label"] == label] for label in ("normal", "abnormal")}


def _wrap(shared_data: Path, row: dict[str, str], out: Path) -> Path:
    ds = wrap_image_as_dx(
        shared_data / "cxr-nih512" / row["image"],
        patient_id=row["patient_id"],
        patient_name=f"Site^Patient{row['patient_id'][4:]}",
        view_position=row["view"] or "PA",
    )
    ds.PatientSex = row["sex"]
    ds.PatientAge = f"{int(float(row['age'])):03d}Y"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _send(settings: Any, files: list[Path]) -> list[str]:
    out = storescu(settings.dicom_port, files)
    assert out.returncode == 0, out.stderr
    return [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files]


def test_site_adaptation_loop(tmp_path: Path, shared_data: Path, pacs: Any) -> None:  # noqa: F811
    from models.runtime import default_model_path
    from triage.worker import start_embedded_worker
    from worklist.accounts import create_token, create_user
    from worklist.http.app import create_app
    from worklist.model_safety import promotion_violations

    shipped = default_model_path()
    if not shipped.exists():
        pytest.skip("the shipped default model is not in models/default")
    settings = make_node_settings(
        tmp_path,
        shipped,
        pacs.destination,
        pseudonym_key="integration-test-pseudonym-key",
        session_secret="s" * 32,
    )
    node = start_scp(settings)
    embedded = start_embedded_worker(settings, extra_env=FAST_OPTIONS)
    node.workers.extend(embedded.processes.values())
    rows = _rows(shared_data)
    truth: dict[str, str] = {}

    def send(batch: list[dict[str, str]], tag: str) -> list[str]:
        files = [_wrap(shared_data, r, tmp_path / tag / f"{i}.dcm") for i, r in enumerate(batch)]
        uids = _send(settings, files)
        truth.update({uid: r["label"] for uid, r in zip(uids, batch, strict=True)})
        return uids

    try:
        with node.session_factory() as session:
            create_user(session, username="rad", password="site passphrase 1", role="radiologist")
            token, _ = create_token(session, username="rad", name="test")
            session.commit()
        auth = {"Authorization": f"Bearer {token}"}
        client = TestClient(create_app(settings, node.session_factory))

        def label(uids: list[str]) -> None:
            for uid in uids:
                r = client.post(
                    f"/api/studies/{uid}/feedback", json={"label": truth[uid]}, headers=auth
                )
                assert r.status_code == 201, r.text

        # 1. The site's first studies, triaged by the shipped model, labelled.
        phase1 = send(rows["normal"][:PHASE1] + rows["abnormal"][:PHASE1], "phase1")
        wait_for_results(node, phase1, timeout=240)
        label(phase1)

        # 2. Export, train a new head from the champion, register it in shadow.
        export = tmp_path / "export"
        out = node_cli(settings, "dataset", "export", "--out", str(export))
        assert out.returncode == 0, out.stderr
        manifest = json.loads(out.stdout)
        assert manifest["images"] == 2 * PHASE1
        text = (export / "labels.csv").read_text()
        assert "nih-" not in text and "Site^" not in text  # pseudonymised
        train = subprocess.run(
            [
                sys.executable,
                "-m",
                "models.cli",
                "train",
                "--init",
                str(shipped),
                "--labels",
                str(export / "labels.csv"),
                "--images-root",
                str(export),
                "--out",
                str(tmp_path / "run"),
                "--name",
                "cxr-triage-site",
                "--version",
                "0.1.0",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert train.returncode == 0, train.stderr
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        out = node_cli(settings, "model", "add", summary["model"], "--shadow")
        assert out.returncode == 0, out.stderr
        listing = node_cli(settings, "model", "list", "--json")
        roles = {m["name"]: m["role"] for m in json.loads(listing.stdout)}
        assert roles == {"cxr-triage-default": "champion", "cxr-triage-site": "shadow"}

        # 3. New studies: the champion decides, the shadow scores beside it.
        since = datetime.now(UTC).isoformat()
        phase2 = send(
            rows["normal"][PHASE1 : PHASE1 + PHASE2] + rows["abnormal"][PHASE1 : PHASE1 + PHASE2],
            "phase2",
        )
        results = wait_for_results(node, phase2, timeout=180)

        def shadow_count() -> int:
            with node.session_factory() as s:
                return int(
                    s.scalar(
                        select(func.count())
                        .select_from(ShadowResult)
                        .join(Study, Study.id == ShadowResult.study_id)
                        .where(Study.study_instance_uid.in_(phase2))
                    )
                )

        wait_until(lambda: shadow_count() == 2 * PHASE2, timeout=60, what="shadow scores")
        assert {r.model_name for r in results.values()} == {"cxr-triage-default"}
        assert len(pacs.received()) == 2 * PHASE1 + 2 * PHASE2  # no SR from the shadow
        label(phase2)

        # 4. Compare on the labelled new studies; promote under the safety rule.
        out = node_cli(settings, "model", "compare", "--since", since, "--json", "--n-boot", "200")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        (comparison,) = report["comparisons"]
        assert comparison["overall"]["n"] == 2 * PHASE2
        assert set(comparison["subgroups"]) == {"age_band", "sex", "view"}
        violations = promotion_violations(comparison)
        out = node_cli(settings, "model", "promote", "cxr-triage-site", "--since", since)
        if violations:
            assert out.returncode == 1 and "refused by the safety rule" in out.stderr
            out = node_cli(
                settings,
                "model",
                "promote",
                "cxr-triage-site",
                "--since",
                since,
                "--force",
                "--reason",
                "integration test: site lead accepts",
            )
        assert out.returncode == 0, out.stderr

        # 5. The next study is decided, and its SR written, by the new champion.
        (after,) = send(rows["abnormal"][PHASE1 + PHASE2 : PHASE1 + PHASE2 + 1], "after")
        result = wait_for_results(node, [after], timeout=120)[after]
        assert result.model_name == "cxr-triage-site"
        assert result.model_sha256 == summary["sha256"]
        check_sr_matches_database(node, pacs, result)
        from worklist.priority import compute_priority

        expected = compute_priority(
            status="triaged",
            decision=result.decision,
            probability=result.probability,
            requested_priority=None,
            high_confidence=settings.high_confidence,
        )
        assert result.priority == int(expected.priority)
        card_threshold = summary["operating_points"]["balanced"]
        assert result.threshold == pytest.approx(card_threshold)

        # 6. Rollback: the shipped model decides again.
        out = node_cli(settings, "model", "rollback")
        assert out.returncode == 0, out.stderr
        (back,) = send(rows["normal"][PHASE1 + PHASE2 : PHASE1 + PHASE2 + 1], "back")
        result = wait_for_results(node, [back], timeout=120)[back]
        assert result.model_name == "cxr-triage-default"
        check_sr_matches_database(node, pacs, result)

        def shadow_of(result_id: int) -> ShadowResult | None:
            with node.session_factory() as s:
                return s.scalar(select(ShadowResult).where(ShadowResult.result_id == result_id))

        # The shadow scores after the champion's SR is on its way: wait for it.
        shadow = wait_until(lambda: shadow_of(result.id), timeout=60, what="the shadow score")
        assert shadow.model_name == "cxr-triage-site"
    finally:
        node.stop()
