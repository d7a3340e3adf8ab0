"""Fixtures of the reliability suite: private Redis and PostgreSQL servers that a test
may restart, a dcmtk storescp PACS with unique file names (a duplicate C-STORE shows
as a second file), the node as separate ``triage-node`` processes with their logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_until
from tests.integration.deploy.helpers import Proc, echo, need_tools, node_env, triage_node
from tests.support.tiny_model import build_tiny_model


def _pg_bin() -> Path:
    """The newest PostgreSQL server binaries of the machine (Debian layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()

#: Node options for fast recovery in tests (sweep, backoff, lease, quiet period).
FAST = {
    "stable_seconds": 2,
    "stability_poll_seconds": 0.2,
    "min_free_mb": 0,
    "sweep_seconds": 0.5,
    "delivery_backoff_seconds": 0.5,
    "delivery_backoff_max_seconds": 2,
    "delivery_retry_hours": 1,
    "lease_seconds": 6,
}


def _missing(why: str) -> None:
    """Fail in CI (where .ci/run provides everything), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (needed by the reliability suite in CI)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX classifier with its card (fast on a CPU)."""
    path = tmp_path_factory.mktemp("reliability-model") / "tiny.onnx"
    build_tiny_model(path, input_size=64)
    return path


# Private Redis -------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    """A ``redis-server`` of this test on a free port, without persistence, so that a
    restart loses every queued message."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=20, what="private redis-server")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)

    def ping(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL (nothing saved: the queues are gone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of this test only (restart it freely)."""
    if shutil.which("redis-server") is None:
        _missing("redis-server not installed")
    server = PrivateRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()


# Private PostgreSQL --------------------------------------------------------------------


def _as_postgres(argv: list[str]) -> list[str]:
    """Run ``argv`` as the ``postgres`` user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this test (initdb in a temporary directory, a free
    port, the socket in the same directory), which the test may stop and start."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/triage"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        out = subprocess.run(
            _as_postgres([*argv]), capture_output=True, text=True, timeout=timeout, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stdout}\n{out.stderr}")

    def init(self) -> PrivatePostgres:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start()
        self._run(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "triage",
        )  # fmt: skip
        return self

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash, no shutdown checkpoint)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        out = subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return out.returncode == 0


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test only (never the machine's shared one)."""
    if not (PG_BIN / "initdb").exists():
        _missing(f"PostgreSQL server binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="triage-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PrivatePostgres(root)
    try:
        server.init()
        yield server
    finally:
        if server.data.exists() and server.running():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


# The PACS with unique file names --------------------------------------------------------


class UniquePacs:
    """dcmtk storescp with ``+uf``: every C-STORE makes a new file, so a duplicate
    delivery of the same SR is counted, not overwritten. Start/stop at will."""

    def __init__(self, directory: Path, logs: Path) -> None:
        self.directory = directory
        self.logs = logs
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None

    @property
    def destination(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def start(self) -> UniquePacs:
        self.proc = Proc(
            "storescp",
            ["storescp", "-aet", "PACS", "+xa", "+uf", "-od", str(self.directory), str(self.port)],
            dict(os.environ),
            self.logs / "storescp.log",
        ).start()
        wait_until(lambda: echo(self.port, "PACS"), timeout=20, what="storescp C-ECHO")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def sr_uids(self) -> list[str]:
        """SOP Instance UID of every file received (one entry per C-STORE)."""
        import pydicom

        return [
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in sorted(self.directory.iterdir())
            if p.is_file()
        ]

    def count(self) -> int:
        return sum(1 for p in self.directory.iterdir() if p.is_file())


# The node as processes ------------------------------------------------------------------


@dataclass
class Cluster:
    """The node as separate processes (``triage-node scp`` and ``worker``) over a
    database and a broker, with a PACS; every process logs to ``logs/NAME.log``."""

    tmp: Path
    database_url: str
    broker_url: str
    model: Path
    pacs: UniquePacs
    options: dict[str, Any] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "node"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def env(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "database_url": self.database_url,
            "broker_url": self.broker_url,
            "dicom_host": "127.0.0.1",
            "dicom_port": self.dicom_port,
            "destinations": self.pacs.destination,
            "model_path": self.model,
            "log_level": "INFO",
            **FAST,
            **self.options,
        }
        return node_env(**values)

    def upgrade(self) -> None:
        from worklist.core.migrate import upgrade

        upgrade(self.database_url)

    def start(self, name: str, args: list[str]) -> Proc:
        old = self.procs.get(name)
        if old is not None:
            old.stop()
            old.log_path.rename(old.log_path.with_suffix(f".{old.pid}.log"))
        proc = triage_node(name, args, self.env(), self.logs)
        self.procs[name] = proc
        return proc

    def start_scp(self) -> Proc:
        proc = self.start("scp", ["scp"])
        wait_until(
            lambda: self._alive(proc) and echo(self.dicom_port),
            timeout=60,
            interval=0.3,
            what="the SCP to answer C-ECHO",
        )
        return proc

    def start_worker(self, queue: str, concurrency: int = 1, name: str | None = None) -> Proc:
        import re

        proc = self.start(
            name or queue,
            # --verbose: the tests read Celery's task lines (and scan them for patient data)
            ["--verbose", "worker", "--queues", queue, "--concurrency", str(concurrency)],
        )
        wait_until(
            lambda: self._alive(proc) and re.search(r"\bready\.", proc.log()),
            timeout=90,
            interval=0.3,
            what=f"the {queue} worker to be ready",
        )
        return proc

    def _alive(self, proc: Proc) -> bool:
        if not proc.running():
            pytest.fail(f"{proc.name} exited early:\n{proc.tail()}")
        return True

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.procs.values())

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


@pytest.fixture
def make_cluster(
    tmp_path: Path, tiny_model: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    """Build a :class:`Cluster` (and its PACS, started); everything stops afterwards.
    On failure, the tail of every process log is printed."""
    need_tools("storescu", "storescp", "echoscu")
    made: list[Cluster] = []

    def _make(database_url: str, broker_url: str, **options: Any) -> Cluster:
        logs = tmp_path / "logs"
        pacs = UniquePacs(tmp_path / "pacs", logs).start()
        cluster = Cluster(tmp_path, database_url, broker_url, tiny_model, pacs, options)
        cluster.upgrade()
        made.append(cluster)
        return cluster

    yield _make
    failed = getattr(request.node, "rep_call", None)
    for cluster in made:
        if failed is not None and failed.failed:
            print(cluster.tails())
        cluster.stop()
        cluster.pacs.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Keep each phase's report on the item (``rep_call``) for the fixtures above."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
