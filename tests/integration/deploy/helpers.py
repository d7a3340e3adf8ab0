"""Helpers for the deployment tests: ``triage-node`` subprocesses with their logs,
chest radiographs with fresh UIDs, small HTTP calls."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import environment_without_settings

BIN = Path(sys.executable).parent
TRIAGE_NODE = BIN / "triage-node"

#: Fast outbox retries and sweeps (``TRIAGE_*`` triage options, which
#: ``Settings`` leaves alone).
FAST_OPTIONS = {
    "TRIAGE_SWEEP_SECONDS": "0.3",
    "TRIAGE_DELIVERY_BACKOFF_SECONDS": "0.5",
    "TRIAGE_DELIVERY_BACKOFF_MAX_SECONDS": "1",
    "TRIAGE_LEASE_SECONDS": "60",
}

LOG_TAIL_CHARS = 4000


def need_tools(*tools: str) -> None:
    """Skip when a binary is not installed (``.ci/run`` installs them in CI)."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian packages dcmtk / orthanc)")


def node_env(**settings: Any) -> dict[str, str]:
    """This process's environment without any ``TRIAGE_*``, plus ``settings``.

    ``node_env(stable_seconds=1)`` sets ``TRIAGE_STABLE_SECONDS=1``.
    """
    env = environment_without_settings()
    env.update(FAST_OPTIONS)
    env.update({f"TRIAGE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@dataclass
class Proc:
    """A subprocess whose stdout and stderr go to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: see stop()
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self) -> str:
        return (
            f"----- {self.name} (pid {self.process.pid if self.process else '-'}, "
            f"rc {self.process.poll() if self.process else '-'}) -----\n"
            f"{self.log()[-LOG_TAIL_CHARS:]}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; then SIGKILL whatever it
        left behind in its process group (e.g. the worker subprocesses of ``serve``)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def triage_node(name: str, args: list[str], env: dict[str, str], logs: Path) -> Proc:
    """Start ``triage-node ARGS`` with its log in ``logs/NAME.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    return Proc(name, [str(TRIAGE_NODE), *args], env, logs / f"{name}.log").start()


def run_triage_node(args: list[str], env: dict[str, str]) -> None:
    """Run ``triage-node ARGS`` to completion; fail with its output otherwise."""
    out = subprocess.run(
        [str(TRIAGE_NODE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"triage-node {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


def echo(port: int, called: str = "TRIAGE") -> bool:
    """True when a C-ECHO to 127.0.0.1:``port`` succeeds."""
    out = subprocess.run(
        ["echoscu", "-aec", called, "-to", "2", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return out.returncode == 0


def http(
    method: str,
    url: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    *,
    timeout: float = 10.0,
) -> Any:
    """An HTTP call answering JSON (decoded), or bytes when the answer is not JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
        if "json" in response.headers.get("Content-Type", ""):
            return json.loads(payload)
        return payload


def http_ok(url: str) -> bool:
    """True when GET ``url`` answers 2xx."""
    try:
        http("GET", url, timeout=2)
        return True
    except (OSError, urllib.error.HTTPError):
        return False


def chest_copies(source: Path, directory: Path, n: int, *, size: int = 512) -> list[Path]:
    """``n`` copies of a real chest radiograph, each a new study (fresh Study, Series
    and SOP Instance UIDs, its own accession number), downscaled to about ``size``
    pixels on the long side and stored uncompressed (explicit VR little endian)."""
    directory.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    step = max(1, int(np.ceil(max(pixels.shape) / size)))
    small = np.ascontiguousarray(pixels[::step, ::step]).astype(pixels.dtype)
    ds.PixelData = small.tobytes()
    ds.Rows, ds.Columns = small.shape
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds:
            setattr(ds, keyword, [float(v) * step for v in getattr(ds, keyword)])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = []
    for i in range(n):
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = f"SCALE{i:05d}"
        path = directory / f"chest-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out
