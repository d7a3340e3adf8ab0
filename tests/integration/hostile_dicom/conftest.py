"""The node as a real ``triage-node scp`` process (SQLite in its data directory, two
SCP processes sharing the port), for attacks on its DICOM port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_until
from tests.integration.deploy.helpers import (
    Proc,
    echo,
    need_tools,
    node_env,
    run_triage_node,
    triage_node,
)
from tests.support.procfs import descendants


@dataclass
class ScpNode:
    """A running ``triage-node scp``."""

    proc: Proc
    port: int
    data_dir: Path
    env: dict[str, str]

    def pids(self) -> list[int]:
        """The main process and every process it started."""
        return descendants(self.proc.pid)

    def log(self) -> str:
        return self.proc.log()

    @property
    def database_url(self) -> str:
        """The node's SQLite database (the default in its data directory)."""
        return f"sqlite:///{self.data_dir / 'triage.db'}"


@pytest.fixture
def scp_node(tmp_path: Path) -> Iterator[Callable[..., ScpNode]]:
    """Start ``triage-node scp`` with extra settings; stopped after the test."""
    need_tools("storescu", "echoscu")
    started: list[Proc] = []

    def _start(**settings: Any) -> ScpNode:
        data_dir = tmp_path / "node"
        port = free_port()
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "dicom_host": "127.0.0.1",
            "dicom_port": port,
            "min_free_mb": 0,
            "stable_seconds": 86400,
            "stability_poll_seconds": 0.2,
            "scp_processes": 2,
        }
        values.update(settings)
        env = node_env(**values)
        run_triage_node(["db", "upgrade"], env)
        proc = triage_node("scp", ["scp"], env, tmp_path / "logs")
        started.append(proc)
        node = ScpNode(proc, port, data_dir, env)
        processes = int(values["scp_processes"])
        ready_line = (
            f"DICOM port shared by {processes} SCP processes"
            if processes > 1
            else "listening on 127.0.0.1"
        )
        wait_until(
            lambda: ready_line in node.log() or not proc.running(),
            timeout=90,
            what="every SCP process listening",
        )
        assert proc.running(), node.log()[-3000:]
        if "tls_cert" not in settings:
            assert echo(port), node.log()[-3000:]
        return node

    yield _start
    for proc in started:
        proc.stop()
