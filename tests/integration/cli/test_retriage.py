"""``triage-node retriage STUDY_UID`` on a real node: a new revision is triaged and the
request is in the audit log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pydicom

from tests.conftest import wait_until
from tests.integration.cli.node import serve


def _results(db_path: Path, study_uid: str) -> list[tuple[int, str]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(
            "SELECT r.revision, r.status FROM triage_results r JOIN studies s"
            " ON s.id = r.study_id WHERE s.study_instance_uid = ? ORDER BY r.revision",
            (study_uid,),
        ).fetchall()
    finally:
        db.close()


def test_retriage_queues_a_new_revision_that_the_node_triages(
    tmp_path: Path, shared_data: Path
) -> None:
    chest = shared_data / "dicom" / "real" / "RG1_from_J2KI_explicit.dcm"
    study_uid = str(pydicom.dcmread(chest, stop_before_pixels=True).StudyInstanceUID)
    with serve(tmp_path) as node:
        db_path = node.data_dir / "triage.db"
        # Before anything arrived: a clear refusal.
        unknown = node.cli("retriage", "1.2.3.4.5")
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == "triage-node retriage: no study 1.2.3.4.5"
        sent = subprocess.run(
            ["/usr/bin/storescu", "-aec", "TRIAGE", "127.0.0.1", str(node.dicom_port), str(chest)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: _results(db_path, study_uid) == [(1, "triaged")],
            timeout=120,
            what="the first triage",
        )
        done = node.cli("retriage", study_uid, "--reason", "model 0.2.0")
        assert done.returncode == 0, done.stderr
        assert f"study {study_uid} queued as revision 2 (was 1)" in done.stdout
        wait_until(
            lambda: _results(db_path, study_uid) == [(1, "triaged"), (2, "triaged")],
            timeout=120,
            what="the re-triage",
        )
        db = sqlite3.connect(db_path)
        try:
            audit = db.execute(
                "SELECT action, username, auth_method, study_instance_uid, detail"
                " FROM audit_events WHERE action = 'retriage'"
            ).fetchall()
            state, revision = db.execute(
                "SELECT state, revision FROM studies WHERE study_instance_uid = ?", (study_uid,)
            ).fetchone()
        finally:
            db.close()
    assert (state, revision) == ("triaged", 2)
    assert len(audit) == 1
    action, username, method, uid, detail = audit[0]
    assert (action, method, uid) == ("retriage", "cli", study_uid)
    assert username.startswith("cli:")
    assert json.loads(detail) == {"from_revision": 1, "to_revision": 2, "reason": "model 0.2.0"}
