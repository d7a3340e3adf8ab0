"""Fixtures for the triage end-to-end tests: a dcmtk storescp acting as the PACS,
the node (SCP + workers), labelled PNGs wrapped as DX DICOM."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import environment_without_settings, free_port, wait_until
from tests.support.dx import wrap_image_as_dx
from tests.support.tiny_model import build_tiny_model

#: Fast retries and sweeps for tests (TRIAGE_* triage tuning settings).
FAST_OPTIONS = {
    "TRIAGE_SWEEP_SECONDS": "0.3",
    "TRIAGE_DELIVERY_BACKOFF_SECONDS": "0.5",
    "TRIAGE_DELIVERY_BACKOFF_MAX_SECONDS": "1",
    "TRIAGE_DELIVERY_MAX_ATTEMPTS": "50",
    "TRIAGE_LEASE_SECONDS": "20",
    "TRIAGE_BROKER_POLL_SECONDS": "0.05",
}


def need_tools(*tools: str) -> None:
    """Skip when a binary is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


@dataclass
class Pacs:
    """A dcmtk storescp on a free port, writing what it receives to ``directory``."""

    directory: Path
    port: int = field(default_factory=free_port)
    ae_title: str = "PACS"
    process: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> Pacs:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", self.ae_title, "+xa", "-od", str(self.directory), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._echo, timeout=20, what="storescp to answer C-ECHO")
        return self

    def _echo(self) -> bool:
        out = subprocess.run(
            ["echoscu", "-aec", self.ae_title, "-to", "2", "127.0.0.1", str(self.port)],
            capture_output=True,
            check=False,
        )
        return out.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    """A running storescp (the PACS); stopped after the test."""
    need_tools("storescp", "echoscu", "storescu", "dciodvfy", "dsrdump")
    p = Pacs(tmp_path / "pacs").start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX classifier with its card (until a default model ships)."""
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    build_tiny_model(path, input_size=64)
    return path


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier whose inference takes seconds (worker-kill tests)."""
    path = tmp_path_factory.mktemp("slow") / "slow.onnx"
    build_tiny_model(path, input_size=512, slow_matmuls=1500, name="slow-test-model")
    return path


@pytest.fixture
def labelled_dx(shared_data: Path, tmp_path: Path) -> Callable[[str, int], list[Path]]:
    """Wrap ``n`` labelled NIH PNGs of a label as DX DICOM files (one study each)."""

    def _make(label: str, n: int) -> list[Path]:
        root = shared_data / "cxr-nih64"
        with open(root / "labels.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["label"] == label][:n]
        out = []
        for i, row in enumerate(rows):
            ds = wrap_image_as_dx(
                root / row["image"],
                patient_id=row["patient_id"],
                view_position=row["view"] or "PA",
                accession_number=f"{label[:3].upper()}{i:05d}",
            )
            path = tmp_path / "png-dx" / f"{label}-{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
        return out

    return _make


@dataclass
class Node:
    """The node under test: SCP in this process, workers in subprocesses."""

    settings: Any
    session_factory: Any
    scp: Any = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.scp is not None:
            self.scp.stop()


def start_worker_process(
    settings: Any, queues: str, concurrency: int = 1, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m triage.worker`` as a separate process with the node's settings."""
    from triage.worker import settings_to_env

    env = environment_without_settings()
    env.update(settings_to_env(settings))
    env.update(FAST_OPTIONS)
    env.update(extra_env or {})
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "triage.worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
        ],
        env=env,
    )
