"""The time-to-triage benchmark runs end to end (2 studies, then a burst of 3, embedded
mode, tiny model, two inference processes batching two studies)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.triage.conftest import need_tools


@pytest.mark.slow
def test_time_to_triage_benchmark_smoke(
    tmp_path: Path, shared_data: Path, tiny_model: Path
) -> None:
    need_tools("storescu", "storescp", "echoscu")
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import time_to_triage
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    out = tmp_path / "ttt.json"
    rc = time_to_triage.main(
        [
            "--mode",
            "embedded",
            "--studies",
            "2",
            "--burst",
            "3",
            "--inference-concurrency",
            "2",
            "--batch-studies",
            "2",
            "--model",
            str(tiny_model),
            "--source",
            str(shared_data / "dicom/real/RG1_J2KI.dcm"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    (mode,) = report["modes"]
    assert mode["studies"] == 2
    assert 0 < mode["stable_to_sr"]["p95"] < 30
    assert mode["total"]["p50"] >= mode["minus_quiet"]["p50"]
    burst = mode["burst"]
    assert mode["inference_concurrency"] == 2 and burst["studies"] == 3
    assert mode["batch_studies"] == 2
    assert {"inference-pool", "decode-child", "delivery", "node"} <= set(burst["cpu_ms_per_study"])
    assert burst["first_minus_quiet"] <= burst["last_minus_quiet"] < 60
    assert burst["stable_to_sr"]["max"] <= burst["last_minus_quiet"] + burst["send_s"] + 1
    assert report["throughput"]["images_per_s_batch1"] > 0
