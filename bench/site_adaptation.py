"""Site adaptation at full size: the shipped model against the model the node learns.

The node runs as ``triage-node serve`` does (SCP and stability watcher here, the
embedded Celery workers as subprocesses, SQLite, the shipped default model). Then:

1. every ``cxr-nih512`` **train** radiograph (493 adults) is wrapped as DX DICOM and
   sent with dcmtk ``storescu``; the node triages each study;
2. a radiologist account labels every study through the HTTP API (the NIH label);
3. ``triage-node dataset export`` writes the pseudonymised dataset;
4. ``triage-model train --init`` trains a new head on the shipped model's embedding
   (:mod:`models.finetune`), and ``triage-node model add --shadow`` registers it;
5. both models are scored on the ``cxr-nih512`` **test** split (124 images, never seen
   by the node or the training): ROC-AUC, Brier, sensitivity and specificity at the
   ``balanced`` operating point, 95 % bootstrap intervals and the paired difference.

Usage::

    python bench/site_adaptation.py                  # full size
    python bench/site_adaptation.py --limit 60       # a quick run
    python bench/site_adaptation.py --json bench/results/site_adaptation.json
"""

from __future__ import annotations

import argparse
import csv
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data" / "cxr-nih512").resolve()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rows_of(split: str) -> list[dict[str, str]]:
    """The ``cxr-nih512`` rows of a split."""
    with (DATA / "labels.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def wrap(row: dict[str, str], out: Path) -> Path:
    """One labelled JPEG as a DX file with the row's patient, age, sex and view."""
    sys.path.insert(0, str(REPO))
    from tests.support.dx import wrap_image_as_dx

    ds = wrap_image_as_dx(
        DATA / row["image"], patient_id=row["patient_id"], view_position=row["view"] or "PA"
    )
    ds.PatientSex = row["sex"]
    ds.PatientAge = f"{int(float(row['age'])):03d}Y"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def node_cli(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``triage-node ARGS`` with the node's settings."""
    import os

    from triage.worker import settings_to_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(settings_to_env(settings))
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "triage.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def score(model: Path, rows: list[dict[str, str]]) -> tuple[np.ndarray, dict[str, float]]:
    """Calibrated probabilities of a model on the rows' images, and its thresholds."""
    from models.preprocess import preprocess_file
    from models.runtime import Classifier

    clf = Classifier.load(model, ["CPUExecutionProvider"], max_batch=32)
    spec = clf.card.preprocess_spec
    x = np.stack([preprocess_file(DATA / r["image"], spec) for r in rows])
    prob = clf.predict_proba(x)
    points = {k: float(v["threshold"]) for k, v in clf.card.operating_points.items()}
    return prob, points


def run(limit: int | None, workdir: Path, n_boot: int) -> dict[str, Any]:
    """The whole loop; returns the figures."""
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from dicom_scp.server import start_node_scp
    from models.compare import ModelScores, paired_metrics
    from models.finetune import FinetuneConfig, finetune
    from models.runtime import default_model_path
    from triage.worker import start_embedded_worker
    from worklist.accounts import create_token, create_user
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.migrate import upgrade
    from worklist.core.settings import load_settings
    from worklist.http.app import create_app
    from worklist.tables import Study, TriageResult

    train_rows = rows_of("train")
    if limit:
        by_label = {k: [r for r in train_rows if r["label"] == k] for k in ("normal", "abnormal")}
        train_rows = by_label["normal"][: limit // 2] + by_label["abnormal"][: limit - limit // 2]
    test_rows = rows_of("test")
    settings = load_settings(
        data_dir=workdir / "node",
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        min_free_mb=0,
        stable_seconds=1.0,
        stability_poll_seconds=0.2,
        pseudonym_key=secrets.token_hex(16),
        session_secret=secrets.token_hex(16),
    )
    upgrade(settings.effective_database_url)
    session_factory = make_session_factory(make_engine(settings.effective_database_url))
    scp = start_node_scp(settings, session_factory)
    workers = start_embedded_worker(
        settings, extra_env={"TRIAGE_BROKER_POLL_SECONDS": "0.05", "TRIAGE_SWEEP_SECONDS": "1"}
    )
    timings: dict[str, float] = {}
    try:
        t0 = time.time()
        files = [wrap(r, workdir / "send" / f"{i}.dcm") for i, r in enumerate(train_rows)]
        truth = {}
        import pydicom

        for path, row in zip(files, train_rows, strict=True):
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            truth[uid] = row["label"]
        for start in range(0, len(files), 50):
            out = subprocess.run(
                [
                    "storescu",
                    "-aec",
                    settings.ae_title,
                    "127.0.0.1",
                    str(settings.dicom_port),
                    *map(str, files[start : start + 50]),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"storescu failed: {out.stderr}")
        deadline = time.time() + 3600
        while True:
            with session_factory() as s:
                done = s.scalar(select(func.count()).select_from(TriageResult))
            if done >= len(files):
                break
            if time.time() > deadline:
                raise RuntimeError(f"only {done} of {len(files)} studies triaged in an hour")
            time.sleep(1)
        timings["send_and_triage_s"] = time.time() - t0

        t0 = time.time()
        with session_factory() as s:
            create_user(s, username="rad", password=secrets.token_hex(12), role="radiologist")
            token, _ = create_token(s, username="rad", name="bench")
            s.commit()
        with TestClient(create_app(settings, session_factory)) as client:
            for uid, label in truth.items():
                r = client.post(
                    f"/api/studies/{uid}/feedback",
                    json={"label": label},
                    headers={"Authorization": f"Bearer {token}"},
                )
                if r.status_code != 201:
                    raise RuntimeError(f"feedback refused: {r.status_code} {r.text}")
        timings["label_s"] = time.time() - t0

        t0 = time.time()
        export = workdir / "export"
        out = node_cli(settings, "dataset", "export", "--out", str(export))
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        manifest = json.loads(out.stdout)
        timings["export_s"] = time.time() - t0

        t0 = time.time()
        shipped = default_model_path()
        summary = finetune(
            FinetuneConfig(
                init=str(shipped),
                labels=str(export / "labels.csv"),
                images_root=str(export),
                out_dir=str(workdir / "run"),
                name="cxr-triage-site",
                version="0.1.0",
            )
        )
        timings["train_s"] = time.time() - t0
        out = node_cli(settings, "model", "add", summary["model"], "--shadow")
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        with session_factory() as s:
            studies = s.scalar(select(func.count()).select_from(Study))
    finally:
        workers.stop()
        scp.stop()

    y = np.array([1 if r["label"] == "abnormal" else 0 for r in test_rows])
    p_default, t_default = score(shipped, test_rows)
    p_site, t_site = score(Path(summary["model"]), test_rows)
    figures = paired_metrics(
        y,
        ModelScores("shipped default", p_default, t_default),
        ModelScores("site-adapted", p_site, t_site),
        applied="balanced",
        n_boot=n_boot,
    )
    return {
        "train_studies": len(files),
        "studies_in_node": studies,
        "export": {k: manifest[k] for k in ("images", "patients", "counts")},
        "finetune": summary,
        "test_images": len(y),
        "test_abnormal": int(y.sum()),
        "metrics": figures["metrics"],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def _cell(entry: dict[str, float]) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--limit", type=int, default=None, help="N train images only (half of each class)"
    )
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--keep", default=None, help="work directory to keep (default: temp)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"cxr-nih512 not found at {DATA}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="site-bench-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        result = run(args.limit, workdir, args.n_boot)
    m = result["metrics"]
    print(
        f"cxr-nih512 test split: {result['test_images']} images"
        f" ({result['test_abnormal']} abnormal); node data: {result['train_studies']} train"
        " studies sent as DICOM and labelled via the API;"
        f" head {result['finetune']['fitted_on']}"
    )
    print(f"{'metric':<26} {'shipped default':<24} {'site-adapted':<24} {'difference (p)':<30}")
    for key in ("roc_auc", "brier", "sensitivity@balanced", "specificity@balanced"):
        d = m[key]["difference"]
        print(
            f"{key:<26} {_cell(m[key]['champion']):<24} {_cell(m[key]['challenger']):<24} "
            f"{_cell(d)} (p={d['p_value']:.3f})"
        )
    print("timings (s):", json.dumps(result["timings_s"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
