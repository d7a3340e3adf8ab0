"""A real ``triage-node serve`` process for the CLI and first-hour tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import environment_without_settings, free_port, wait_until

BIN = Path(sys.executable).parent
TRIAGE_NODE = str(BIN / "triage-node")


@dataclass
class Node:
    """A running node: its ports, data directory, environment and console output."""

    proc: subprocess.Popen
    dicom_port: int
    http_port: int
    data_dir: Path
    env: dict[str, str]
    log_path: Path

    def output(self) -> str:
        """Everything the node wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run another ``triage-node`` command against the same settings."""
        return subprocess.run(
            [TRIAGE_NODE, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )


def need_dcmtk() -> None:
    """Skip when dcmtk's echoscu/storescu are not installed."""
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            pytest.skip(f"dcmtk {tool} not installed")


def echo(port: int, called: str = "TRIAGE") -> bool:
    """True when a C-ECHO to 127.0.0.1:port succeeds (dcmtk echoscu)."""
    result = subprocess.run(
        ["/usr/bin/echoscu", "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


def node_environment(tmp_path: Path, **settings: str) -> tuple[dict[str, str], int, int, Path]:
    """The environment of a node on free ports with its data under ``tmp_path``."""
    dicom_port, http_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = environment_without_settings()
    env.update(
        TRIAGE_DATA_DIR=str(data_dir),
        TRIAGE_DICOM_PORT=str(dicom_port),
        TRIAGE_HTTP_PORT=str(http_port),
        TRIAGE_HTTP_HOST="127.0.0.1",
        TRIAGE_DICOM_HOST="127.0.0.1",
        TRIAGE_STABLE_SECONDS="1",
    )
    env.update(settings)
    return env, dicom_port, http_port, data_dir


@contextmanager
def serve(
    tmp_path: Path, args: Sequence[str] = (), settings: Mapping[str, str] | None = None
) -> Iterator[Node]:
    """Start ``triage-node [args] serve`` and stop it (SIGTERM) afterwards."""
    need_dcmtk()
    env, dicom_port, http_port, data_dir = node_environment(tmp_path, **dict(settings or {}))
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [TRIAGE_NODE, *args, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        node = Node(proc, dicom_port, http_port, data_dir, env, log_path)
        try:
            wait_until(
                lambda: proc.poll() is not None or echo(dicom_port),
                timeout=90,
                what="the node to answer C-ECHO",
            )
            assert proc.poll() is None, node.output()
            yield node
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
