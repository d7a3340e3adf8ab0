"""The embedded mode starts its inference worker with ``inference_processes`` processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import triage.worker as worker_module
from triage.worker import start_embedded_worker
from worklist.core.settings import SettingsError, load_settings


class _FakeProcess:
    def __init__(self, argv: list[str], **_: Any) -> None:
        self.argv = argv
        self.pid = 0

    def poll(self) -> int:
        return 0


def _started(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> dict[str, list[str]]:
    monkeypatch.setattr(worker_module.subprocess, "Popen", _FakeProcess)
    embedded = start_embedded_worker(**kwargs)
    argvs: dict[str, list[str]] = {}
    for queue, proc in embedded.processes.items():
        assert isinstance(proc, _FakeProcess)
        argvs[queue] = proc.argv
    return argvs


def _concurrency(argv: list[str]) -> int:
    return int(argv[argv.index("--concurrency") + 1])


def test_inference_worker_gets_the_configured_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _started(monkeypatch, settings=load_settings(data_dir=tmp_path))
    assert _concurrency(default["inference"]) == 2
    assert _concurrency(default["delivery"]) == 4
    three = _started(monkeypatch, settings=load_settings(data_dir=tmp_path, inference_processes=3))
    assert _concurrency(three["inference"]) == 3
    explicit = _started(
        monkeypatch,
        settings=load_settings(data_dir=tmp_path, inference_processes=3),
        inference_concurrency=1,
    )
    assert _concurrency(explicit["inference"]) == 1


def test_inference_processes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TRIAGE_INFERENCE_PROCESSES"):
        load_settings(data_dir=tmp_path, inference_processes=0)
