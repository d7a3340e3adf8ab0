"""``triage-node serve`` says what matters at start-up, and the libraries' chatter only
with ``--verbose``."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.card import read_card
from models.runtime import default_model_path
from tests.conftest import free_port, wait_until
from tests.integration.cli.node import echo, need_dcmtk, serve

CHATTER = (
    "-------------- [queues]",  # Celery's banner
    "[tasks]",
    "superuser privileges",  # Celery's SecurityWarning
    "alembic.runtime.plugins",
    "Context impl SQLiteImpl",
    "CPendingDeprecationWarning",
    "Traceback",
)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[int]:
    """dcmtk storescp as a PACS that answers C-ECHO."""
    need_dcmtk()
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: echo(port, "PACS"), timeout=20, what="storescp")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _startup_done(output: str, destinations: int) -> bool:
    return len(re.findall(r"destination \S+: C-ECHO", output)) >= destinations


def test_serve_names_the_model_and_echoes_each_destination(tmp_path: Path, pacs: int) -> None:
    down = free_port()  # nothing listens there
    card = read_card(default_model_path())
    destinations = f"PACS@127.0.0.1:{pacs},ARCHIVE@127.0.0.1:{down}"
    with serve(tmp_path, settings={"TRIAGE_DESTINATIONS": destinations}) as node:
        wait_until(lambda: _startup_done(node.output(), 2), timeout=60, what="start-up lines")
        wait_until(
            lambda: node.output().count("triage worker: queues") >= 2,
            timeout=60,
            what="both embedded workers",
        )
        output = node.output()
    model_lines = [line for line in output.splitlines() if "model: " in line]
    assert len(model_lines) == 1, output
    line = model_lines[0]
    assert f"model: {card.name} {card.version}, sha256 {card.sha256[:12]}," in line
    assert "providers CPUExecutionProvider" in line
    threshold = card.operating_points["balanced"]["threshold"]
    assert f"operating point balanced (threshold {threshold:.3f})" in line
    assert f"destination PACS@127.0.0.1:{pacs}: C-ECHO ok" in output
    assert f"destination ARCHIVE@127.0.0.1:{down}: C-ECHO FAILED" in output
    for noise in CHATTER:
        assert noise not in output, noise
    assert " ERROR " not in output, output


def test_verbose_shows_the_banners_with_the_right_routing(tmp_path: Path) -> None:
    with serve(tmp_path, args=["--verbose"]) as node:
        wait_until(lambda: node.output().count("[queues]") >= 2, timeout=60, what="banners")
        wait_until(
            lambda: _startup_done(node.output(), 0) and "destinations: none" in node.output(),
            timeout=60,
            what="start-up lines",
        )
        output = node.output()
    assert "alembic.runtime.plugins" in output
    queues = re.findall(r"\.> (\w+)\s+exchange=(\w+)\(direct\) key=(\w+)", output)
    assert sorted(queues) == [
        ("delivery", "delivery", "delivery"),
        ("inference", "inference", "inference"),
    ], output
