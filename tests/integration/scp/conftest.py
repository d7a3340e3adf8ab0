"""Fixtures for the SCP's network tests: a node on a free port over the test database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_scp.server import NodeScp, start_node_scp
from tests.integration.scp.helpers import RecordingQueue
from worklist.core.settings import Settings, load_settings


@pytest.fixture
def make_settings(tmp_path: Path, port: int, migrated_url: str) -> Callable[..., Settings]:
    """Build node settings on a free port over the migrated test database."""

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": migrated_url,
            "dicom_host": "127.0.0.1",
            "dicom_port": port,
            "min_free_mb": 0,
            "stable_seconds": 60.0,
            "stability_poll_seconds": 0.2,
            "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        }
        values.update(overrides)
        return load_settings(**values)

    return _make


@pytest.fixture
def recording_queue() -> RecordingQueue:
    """A fake triage queue."""
    return RecordingQueue()


@pytest.fixture
def start_node(
    session_factory: Any, recording_queue: RecordingQueue
) -> Iterator[Callable[[Settings], NodeScp]]:
    """Start the node's SCP (watcher included) in-process; stopped after the test."""
    nodes: list[NodeScp] = []

    def _start(settings: Settings) -> NodeScp:
        node = start_node_scp(settings, session_factory, queue=recording_queue)
        nodes.append(node)
        return node

    yield _start
    for node in nodes:
        node.stop()
