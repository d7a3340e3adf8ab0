"""Fixtures of the hostile-input suite: ``triage-node api`` as a real process over a
SQLite data directory, with accounts made by the real CLI."""

from __future__ import annotations

import http.client
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_until
from tests.integration.deploy.helpers import TRIAGE_NODE, Proc, http_ok, node_env, triage_node

PASSWORD = "a long enough passphrase"


@dataclass
class ApiNode:
    """A running ``triage-node api`` and its data directory."""

    proc: Proc
    port: int
    data_dir: Path

    def post_form(
        self,
        path: str,
        fields: dict[str, str],
        *,
        source: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """POST a form from the local address ``source`` (any of 127.0.0.0/8)."""
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        conn.request(
            "POST",
            path,
            body=urllib.parse.urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def login(self, username: str, password: str, **kwargs: Any) -> http.client.HTTPResponse:
        return self.post_form("/login", {"username": username, "password": password}, **kwargs)

    def audit(self, action: str = "login") -> list[tuple[str, str, str]]:
        """``(username, outcome, client_ip)`` of every audit event of ``action``."""
        db = sqlite3.connect(self.data_dir / "triage.db")
        try:
            return db.execute(
                "SELECT username, outcome, client_ip FROM audit_events WHERE action = ? "
                "ORDER BY id",
                (action,),
            ).fetchall()
        finally:
            db.close()


@pytest.fixture
def api_node(tmp_path: Path) -> Iterator[Callable[..., ApiNode]]:
    """Start ``triage-node api`` with settings; accounts ``alice`` and ``bob``
    (radiologists, password :data:`PASSWORD`) exist."""
    started: list[Proc] = []

    def _start(**settings: Any) -> ApiNode:
        data_dir = tmp_path / f"node{len(started)}"
        port = free_port()
        env = node_env(
            data_dir=data_dir,
            http_host="127.0.0.1",
            http_port=port,
            session_secret="hostile-test-secret-0123456789",
            **settings,
        )
        for user in ("alice", "bob"):
            out = subprocess.run(
                [str(TRIAGE_NODE), "user", "add", user, "--role", "radiologist",
                 "--password-stdin"],
                env=env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
        proc = triage_node(f"api{len(started)}", ["api"], env, tmp_path / "logs")
        started.append(proc)
        wait_until(
            lambda: proc.running() and http_ok(f"http://127.0.0.1:{port}/healthz"),
            timeout=60,
            what="triage-node api",
        )
        return ApiNode(proc, port, data_dir)

    yield _start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX classifier with its card (fast on a CPU)."""
    from tests.support.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("hostile-model") / "tiny.onnx"
    build_tiny_model(path, input_size=64)
    return path


@dataclass
class ServeNode:
    """A running ``triage-node serve`` (its own session), a bearer token, its ports."""

    proc: Proc
    dicom_port: int
    http_port: int
    data_dir: Path
    token: str

    def get(self, path: str) -> tuple[int, bytes, str]:
        """GET with the bearer token: (status, body, content type)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body, response.getheader("Content-Type", "")

    def result(self, study_uid: str) -> tuple[str, str | None] | None:
        """(status, reason) of the study's latest triage result, None before one."""
        db = sqlite3.connect(self.data_dir / "triage.db")
        try:
            return db.execute(
                "SELECT r.status, r.reason FROM triage_results r JOIN studies s "
                "ON s.id = r.study_id WHERE s.study_instance_uid = ? ORDER BY r.id DESC",
                (study_uid,),
            ).fetchone()
        finally:
            db.close()


@pytest.fixture
def serve_node(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., ServeNode]]:
    """Start ``triage-node serve`` (tiny model, 1 s quiet period, settings as given)
    with a radiologist's bearer token; everything stops afterwards."""
    from tests.integration.deploy.helpers import echo, need_tools

    need_tools("storescu", "echoscu")
    started: list[Proc] = []

    def _start(**settings: Any) -> ServeNode:
        dicom_port, http_port = free_port(), free_port()
        data_dir = tmp_path / f"serve{len(started)}"
        env = node_env(
            data_dir=data_dir,
            dicom_host="127.0.0.1",
            dicom_port=dicom_port,
            http_host="127.0.0.1",
            http_port=http_port,
            model_path=tiny_model,
            stable_seconds=1,
            stability_poll_seconds=0.2,
            min_free_mb=0,
            session_secret="hostile-test-secret-0123456789",
            **settings,
        )
        for argv, stdin in (
            (["user", "add", "rad", "--role", "radiologist", "--password-stdin"], PASSWORD + "\n"),
            (["token", "add", "--user", "rad", "--name", "test", "--no-expiry"], None),
        ):
            out = subprocess.run(
                [str(TRIAGE_NODE), *argv], env=env, input=stdin, capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
        token = out.stdout.strip().splitlines()[-1]
        proc = triage_node(f"serve{len(started)}", ["serve"], env, tmp_path / "logs")
        started.append(proc)
        wait_until(
            lambda: (
                proc.running()
                and echo(dicom_port)
                and http_ok(f"http://127.0.0.1:{http_port}/healthz")
            ),
            timeout=90,
            interval=0.3,
            what="triage-node serve",
        )
        return ServeNode(proc, dicom_port, http_port, data_dir, token)

    yield _start
    for proc in started:
        proc.stop()
