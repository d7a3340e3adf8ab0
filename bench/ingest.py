"""Ingest benchmark: the node's SCP against dcmtk's storescp and Orthanc.

The same corpus goes, by dcmtk ``storescu``, to each receiver in turn (alternating
within every repeat), over one and over four concurrent associations:

``large``
    The real radiographs in ``../shared/data/dicom/real`` (each in its own transfer
    syntax) plus N copies of the uncompressed 1955x1841 chest CR with fresh
    Study/Series/SOP Instance UIDs.
``small``
    N instances of about 0.5 MB: that chest CR downscaled to 512x512 16-bit, fresh
    UIDs, ten instances to a study.

Every receiver starts on a free port on 127.0.0.1 with its own empty storage, is
waited for with ``echoscu`` under a deadline, and is stopped after the run. Every
sender and receiver runs with ``TCP_NODELAY=1`` in its environment (dcmtk reads it;
without it Nagle's algorithm throttles dcmtk to a few instances per second).

Measured per run: wall time from the start of sending to the exit of the last
``storescu``; receiver CPU seconds (utime + stime, from ``/proc``) of the receiver
process and every process below it, zombies and reaped children included; and the
number of instances the receiver holds afterwards (files for storescp, the REST
``/statistics`` for Orthanc, rows of ``instances`` for the node), which must equal
the corpus size.

Run from the repository root::

    .venv/bin/python bench/ingest.py --repeats 3 --large 40 --small 400

The corpus is built in a temporary directory and deleted afterwards; results go to
``bench/results/ingest-<time>.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO_ROOT / ".." / "shared" / "data" / "dicom").resolve()
CHEST_CR = "real/RG1_from_J2KI_explicit.dcm"
MAX_PDU = 131072
HOST = "127.0.0.1"
RECEIVERS = ("node", "dcmtk", "orthanc", "orthanc-nodelay", "pynetdicom")
DEFAULT_RECEIVERS = ("node", "dcmtk", "orthanc")
START_DEADLINE_S = 60.0
DRAIN_DEADLINE_S = 60.0


class BenchError(RuntimeError):
    """The benchmark could not run or a receiver lost instances."""


# Corpus --------------------------------------------------------------------------


@dataclass
class Corpus:
    """Files to send and the presentation contexts they need.

    Parameters
    ----------
    name : str
        ``large`` or ``small``.
    files : list of Path
        The DICOM files, in sending order.
    total_bytes : int
        Sum of the file sizes.
    contexts : list of tuple of str
        Distinct (SOP Class UID, Transfer Syntax UID) pairs in the files.
    """

    name: str
    files: list[Path]
    total_bytes: int
    contexts: list[tuple[str, str]]


def _fresh_uids(ds: object, *, study: str, series: str) -> None:
    from pydicom.uid import generate_uid

    sop = generate_uid()
    ds.StudyInstanceUID = study  # type: ignore[attr-defined]
    ds.SeriesInstanceUID = series  # type: ignore[attr-defined]
    ds.SOPInstanceUID = sop  # type: ignore[attr-defined]
    ds.file_meta.MediaStorageSOPInstanceUID = sop  # type: ignore[attr-defined]


def _contexts(files: Sequence[Path]) -> list[tuple[str, str]]:
    from pydicom import dcmread

    pairs: set[tuple[str, str]] = set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        pairs.add((str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    return sorted(pairs)


def build_large(out_dir: Path, *, data_dir: Path, copies: int) -> Corpus:
    """The real radiographs plus ``copies`` of the uncompressed chest CR.

    Parameters
    ----------
    out_dir : Path
        Empty directory to write into.
    data_dir : Path
        ``shared/data/dicom``.
    copies : int
        Number of copies of the chest CR, each its own study.

    Returns
    -------
    Corpus
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True)
    files = []
    for src in sorted((data_dir / "real").glob("*.dcm")):
        dst = out_dir / f"real-{src.name}"
        shutil.copyfile(src, dst)
        files.append(dst)
    ds = dcmread(data_dir / CHEST_CR)
    for i in range(copies):
        _fresh_uids(ds, study=generate_uid(), series=generate_uid())
        dst = out_dir / f"chest-{i:04d}.dcm"
        ds.save_as(dst, enforce_file_format=True)
        files.append(dst)
    return Corpus("large", files, sum(f.stat().st_size for f in files), _contexts(files))


def build_small(
    out_dir: Path, *, data_dir: Path, count: int, side: int = 512, per_study: int = 10
) -> Corpus:
    """``count`` instances of the chest CR downscaled to ``side`` x ``side``.

    Parameters
    ----------
    out_dir : Path
        Empty directory to write into.
    data_dir : Path
        ``shared/data/dicom``.
    count : int
        Number of instances.
    side : int
        Rows and columns of the downscaled image (512 gives 0.5 MB at 16 bits).
    per_study : int
        Instances per study (one series per study).

    Returns
    -------
    Corpus
    """
    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True)
    ds = dcmread(data_dir / CHEST_CR)
    pixels = ds.pixel_array
    rows = np.linspace(0, pixels.shape[0] - 1, side).round().astype(int)
    cols = np.linspace(0, pixels.shape[1] - 1, side).round().astype(int)
    small = np.ascontiguousarray(pixels[np.ix_(rows, cols)]).astype(pixels.dtype)
    ds.Rows, ds.Columns = side, side
    ds.PixelData = small.tobytes()
    files = []
    study = series = ""
    for i in range(count):
        if i % per_study == 0:
            study, series = generate_uid(), generate_uid()
        _fresh_uids(ds, study=study, series=series)
        ds.InstanceNumber = i % per_study + 1
        dst = out_dir / f"small-{i:05d}.dcm"
        ds.save_as(dst, enforce_file_format=True)
        files.append(dst)
    return Corpus("small", files, sum(f.stat().st_size for f in files), _contexts(files))


def storescu_config(contexts: Sequence[tuple[str, str]]) -> str:
    """A dcmtk association profile with one presentation context per pair.

    Each context proposes exactly the file's own transfer syntax, so every receiver
    gets every file as stored, with no conversion by ``storescu``.

    Parameters
    ----------
    contexts : sequence of (SOP Class UID, Transfer Syntax UID)

    Returns
    -------
    str
        The text of a ``storescu -xf FILE Bench`` configuration file.
    """
    if not 0 < len(contexts) <= 128:
        raise BenchError(f"{len(contexts)} presentation contexts; dcmtk allows 1 to 128")
    ts_names = {ts: f"TS{i}" for i, ts in enumerate(sorted({ts for _, ts in contexts}))}
    lines = ["[[TransferSyntaxes]]"]
    for ts, name in ts_names.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["", "[[PresentationContexts]]", "[BenchContexts]"]
    for i, (sop_class, ts) in enumerate(contexts, start=1):
        lines.append(f"PresentationContext{i} = {sop_class}\\{ts_names[ts]}")
    lines += ["", "[[Profiles]]", "[Bench]", "PresentationContexts = BenchContexts", ""]
    return "\n".join(lines)


# Processes -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> tuple[int, int, int, int, int]:
    """Parent pid, utime, stime, cutime, cstime (ticks) from a ``/proc/PID/stat`` line."""
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def _all_stats() -> dict[int, tuple[int, int, int, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stats[int(entry)] = parse_stat(Path(f"/proc/{entry}/stat").read_text())
    return stats


def tree_cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU seconds of ``pid`` and all its descendants, and how many descendants are alive.

    Counts utime + stime of each process in the tree (zombies too) plus cutime +
    cstime (children already reaped), so the sum only grows while the tree works.
    """
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for child, (ppid, *_rest) in stats.items():
        children.setdefault(ppid, []).append(child)
    total, alive, stack = 0, 0, [pid]
    while stack:
        current = stack.pop()
        if current not in stats:
            continue
        _ppid, utime, stime, cutime, cstime = stats[current]
        total += utime + stime + cutime + cstime
        if current != pid and _is_alive(current):
            alive += 1
        stack.extend(children.get(current, []))
    return total / _CLK_TCK, alive


def resident_children(pid: int, *, settle_s: float = 0.5, deadline_s: float = 30.0) -> int:
    """How many descendants of ``pid`` live on while it is idle.

    The node keeps its extra SCP processes (and multiprocessing's resource
    tracker) for as long as it runs; storescp keeps none. Taken when two counts
    ``settle_s`` apart agree, so that the process of a finished C-ECHO is not counted.
    """
    end = time.monotonic() + deadline_s
    count = tree_cpu_seconds(pid)[1]
    while time.monotonic() < end:
        time.sleep(settle_s)
        again = tree_cpu_seconds(pid)[1]
        if again == count:
            return count
        count = again
    return count


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] not in "ZX"


def wait_until(predicate: Callable[[], bool], *, deadline_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; raise BenchError after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def _child_env(extra: dict[str, str] | None = None, *, nodelay: bool = True) -> dict[str, str]:
    """This environment without TRIAGE_* (the node refuses unknown ones), plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_") and k != "TCP_NODELAY"
    }
    if nodelay:
        env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


# Receivers -----------------------------------------------------------------------


@dataclass
class Receiver:
    """One receiver process and how to ask it how many instances it holds."""

    name: str
    ae_title: str
    port: int
    proc: subprocess.Popen[bytes]
    count: Callable[[], int]
    log: Path

    def echo(self) -> bool:
        """True when a C-ECHO succeeds."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
        result = subprocess.run(
            ["echoscu", "-to", "2", "-aec", self.ae_title, HOST, str(self.port)],
            capture_output=True,
            env=_child_env(),
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Terminate the receiver (kill after 15 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _popen(cmd: list[str], *, env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)


def start_dcmtk(work: Path) -> Receiver:
    """dcmtk ``storescp --fork --max-pdu 131072 +B`` (bit-preserving, no fsync)."""
    store = work / "store"
    store.mkdir()
    port = free_port()
    cmd = ["storescp", "--fork", "--max-pdu", str(MAX_PDU), "+B", "+xa", "-od", str(store)]
    log = work / "storescp.log"
    proc = _popen([*cmd, str(port)], env=_child_env(), log=log, cwd=work)
    return Receiver("dcmtk", "STORESCP", port, proc, lambda: sum(1 for _ in store.iterdir()), log)


def start_orthanc(work: Path, *, nodelay: bool = False) -> Receiver:
    """Orthanc with a generated configuration (storage and index in ``work``).

    Orthanc's DICOM server is dcmtk's, so ``TCP_NODELAY=1`` in its environment turns
    Nagle's algorithm off for it too; as shipped (``nodelay=False``) it is on.
    """
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "StorageCompression": False,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
    }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = work / "orthanc.log"
    env = _child_env(nodelay=nodelay)
    proc = _popen(["Orthanc", str(config_path)], env=env, log=log, cwd=work)

    def count() -> int:
        url = f"http://{HOST}:{http_port}/statistics"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return int(json.load(response)["CountInstances"])

    name = "orthanc-nodelay" if nodelay else "orthanc"
    return Receiver(name, "ORTHANC", dicom_port, proc, count, log)


def start_node(work: Path, *, source: Path | None = None) -> Receiver:
    """``triage-node scp`` with its database (SQLite in the data dir) and fsync.

    Parameters
    ----------
    work : Path
        Empty directory for the node's data dir and log.
    source : Path, optional
        Another checkout of the node (a branch, a candidate fix) to run instead of
        the installed one; it goes first on the node's ``PYTHONPATH``.
    """
    triage = [sys.executable, "-m", "triage.cli"]
    data = work / "data"
    port = free_port()
    env = _child_env(
        {
            "TRIAGE_DATA_DIR": str(data),
            "TRIAGE_DICOM_HOST": HOST,
            "TRIAGE_DICOM_PORT": str(port),
            "TRIAGE_AE_TITLE": "TRIAGE",
            "TRIAGE_STABLE_SECONDS": "86400",
        }
    )
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    log = work / "node.log"
    with log.open("ab") as sink:
        subprocess.run(
            [*triage, "db", "upgrade"], env=env, stdout=sink, stderr=sink, check=True, cwd=work
        )
    proc = _popen([*triage, "scp"], env=env, log=log, cwd=work)

    def count() -> int:
        import sqlite3

        with contextlib.closing(sqlite3.connect(data / "triage.db", timeout=10)) as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    return Receiver("node", "TRIAGE", port, proc, count, log)


def start_pynetdicom(work: Path) -> Receiver:
    """``bench/pynetdicom_floor_scp.py``: pynetdicom answering Success, keeping nothing.

    The floor for any pynetdicom-based receiver on this machine (see that script),
    with as many processes on the port as the node runs by default.
    """
    port = free_port()
    count_file = work / "count"
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "pynetdicom_floor_scp.py")]
    cmd += [str(port), str(count_file), "--processes", str(_node_default_processes())]
    env = _child_env({"PYTHONPATH": str(REPO_ROOT)})
    log = work / "pynetdicom.log"
    proc = _popen(cmd, env=env, log=log, cwd=work)

    def count() -> int:
        return sum(int(path.read_text() or 0) for path in work.glob("count.[0-9]*"))

    return Receiver("pynetdicom", "FLOOR", port, proc, count, log)


def _node_default_processes() -> int:
    from worklist.core.settings import Settings

    return int(Settings.model_fields["scp_processes"].default)


STARTERS: dict[str, Callable[[Path], Receiver]] = {
    "node": start_node,
    "dcmtk": start_dcmtk,
    "orthanc": start_orthanc,
    "orthanc-nodelay": lambda work: start_orthanc(work, nodelay=True),
    "pynetdicom": start_pynetdicom,
}


# One run -------------------------------------------------------------------------


def split_round_robin(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``parts`` lists taking the files in turn (sizes differ by at most one)."""
    return [list(files[i::parts]) for i in range(parts) if files[i::parts]]


def send(
    files: Sequence[Path], *, receiver: Receiver, associations: int, config: Path, work: Path
) -> float:
    """Send with ``associations`` concurrent storescu; return the wall time in seconds."""
    procs = []
    started = time.perf_counter()
    for i, chunk in enumerate(split_round_robin(files, associations)):
        cmd = [
            "storescu", "-nh", "-aec", receiver.ae_title, "--max-pdu", str(MAX_PDU),
            "-xf", str(config), "Bench", HOST, str(receiver.port), *map(str, chunk),
        ]  # fmt: skip
        log = work / f"storescu-{i}.log"
        procs.append((_popen(cmd, env=_child_env(), log=log, cwd=work), log))
    for proc, _log in procs:
        proc.wait()
    elapsed = time.perf_counter() - started
    failed = [str(log) for proc, log in procs if proc.returncode != 0]
    if failed:
        raise BenchError(f"storescu failed against {receiver.name}; see {', '.join(failed)}")
    return elapsed


@dataclass
class RunResult:
    """One measured run."""

    receiver: str
    corpus: str
    associations: int
    repeat: int
    instances: int
    total_bytes: int
    wall_s: float
    cpu_s: float
    instances_per_s: float = field(init=False)
    mb_per_s: float = field(init=False)
    cpu_s_per_instance: float = field(init=False)

    def __post_init__(self) -> None:
        self.instances_per_s = self.instances / self.wall_s
        self.mb_per_s = self.total_bytes / 1e6 / self.wall_s
        self.cpu_s_per_instance = self.cpu_s / self.instances


def run_once(
    name: str,
    corpus: Corpus,
    *,
    associations: int,
    repeat: int,
    config: Path,
    scratch: Path,
    start: Callable[[Path], Receiver] | None = None,
) -> RunResult:
    """Start receiver ``name`` fresh, send ``corpus``, check the count, stop it.

    ``start`` overrides how the receiver is started (default ``STARTERS[name]``).
    """
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    receiver = (start or STARTERS[name])(work)
    try:
        wait_until(receiver.echo, deadline_s=START_DEADLINE_S, what=f"{name} to answer C-ECHO")
        resident = resident_children(receiver.proc.pid)
        cpu_before, _ = tree_cpu_seconds(receiver.proc.pid)
        wall = send(
            corpus.files, receiver=receiver, associations=associations, config=config, work=work
        )
        expected = len(corpus.files)
        wait_until(
            lambda: receiver.count() >= expected,
            deadline_s=DRAIN_DEADLINE_S,
            what=f"{name} to hold {expected} instances",
        )
        wait_until(
            lambda: tree_cpu_seconds(receiver.proc.pid)[1] <= resident,
            deadline_s=DRAIN_DEADLINE_S,
            what=f"{name}'s association processes to exit",
        )
        cpu_after, _ = tree_cpu_seconds(receiver.proc.pid)
        held = receiver.count()
        if held != expected:
            raise BenchError(f"{name} holds {held} instances, expected {expected}")
    finally:
        receiver.stop()
    result = RunResult(
        name, corpus.name, associations, repeat, expected, corpus.total_bytes, wall,
        cpu_after - cpu_before,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return result


# Summary -------------------------------------------------------------------------


@dataclass
class SummaryRow:
    """Medians over the repeats of one (corpus, associations, receiver)."""

    corpus: str
    associations: int
    receiver: str
    runs: int
    instances_per_s: float
    mb_per_s: float
    cpu_s_per_instance: float
    node_ratios: dict[str, float] = field(default_factory=dict)
    """On the node's rows: node instances/s over each other receiver's."""


def summarize(results: Sequence[RunResult]) -> list[SummaryRow]:
    """Medians over repeats per (corpus, associations, receiver), with node ratios."""
    groups: dict[tuple[str, int, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.corpus, r.associations, r.receiver), []).append(r)
    rows = {
        key: SummaryRow(
            *key,
            runs=len(runs),
            instances_per_s=statistics.median(r.instances_per_s for r in runs),
            mb_per_s=statistics.median(r.mb_per_s for r in runs),
            cpu_s_per_instance=statistics.median(r.cpu_s_per_instance for r in runs),
        )
        for key, runs in groups.items()
    }
    for (corpus, assoc, receiver), row in rows.items():
        node = rows.get((corpus, assoc, "node"))
        if node is not None and receiver != "node":
            node.node_ratios[receiver] = node.instances_per_s / row.instances_per_s
    order = {name: i for i, name in enumerate(RECEIVERS)}
    return sorted(rows.values(), key=lambda r: (r.corpus, r.associations, order[r.receiver]))


def format_table(rows: Sequence[SummaryRow]) -> str:
    """A Markdown table of :func:`summarize` rows."""
    others = [o for o in RECEIVERS if o != "node" and any(r.receiver == o for r in rows)]
    lines = [
        "| corpus | assoc | receiver | inst/s | MB/s | CPU s/inst |"
        + "".join(f" node/{o} |" for o in others),
        "|---|---:|---|---:|---:|---:|" + "---:|" * len(others),
    ]
    for r in rows:
        ratios = [r.node_ratios.get(o) for o in others]
        lines.append(
            f"| {r.corpus} | {r.associations} | {r.receiver} | {r.instances_per_s:.1f} "
            f"| {r.mb_per_s:.1f} | {r.cpu_s_per_instance:.4f} |"
            + "".join("  |" if x is None else f" {x:.2f}x |" for x in ratios)
        )
    return "\n".join(lines)


# Entry point ---------------------------------------------------------------------


@contextlib.contextmanager
def _scratch(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--large", type=int, default=40, help="copies of the 1955x1841 CR")
    parser.add_argument("--small", type=int, default=400, help="0.5 MB instances")
    parser.add_argument(
        "--receivers",
        default=",".join(DEFAULT_RECEIVERS),
        help=f"comma-separated, of {', '.join(RECEIVERS)}",
    )
    parser.add_argument("--associations", default="1,4", help="comma-separated counts")
    parser.add_argument("--corpora", default="large,small", help="comma-separated")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data/dicom")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/...)")
    parser.add_argument(
        "--node-source",
        type=Path,
        help="run the node from this checkout (goes first on its PYTHONPATH)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the corpus, run every configuration, print the table, save the JSON."""
    args = _parser().parse_args(argv)
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    unknown = set(receivers) - set(RECEIVERS)
    if unknown:
        raise SystemExit(f"unknown receivers: {sorted(unknown)}")
    if "node" in receivers and not (REPO_ROOT / "dicom_scp" / "server.py").exists():
        raise SystemExit("dicom_scp/server.py is missing: the node SCP has not landed yet")
    starters = dict(STARTERS)
    if args.node_source is not None:
        source = args.node_source.resolve()
        starters["node"] = lambda work: start_node(work, source=source)
    associations = [int(a) for a in args.associations.split(",")]
    corpora_names = [c.strip() for c in args.corpora.split(",") if c.strip()]
    out = args.out or REPO_ROOT / "bench" / "results" / (
        f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    results: list[RunResult] = []
    failures: list[str] = []
    with _scratch(args.keep) as scratch:
        corpora = []
        for name in corpora_names:
            if name == "large":
                corpus = build_large(scratch / name, data_dir=args.data, copies=args.large)
            elif name == "small":
                corpus = build_small(scratch / name, data_dir=args.data, count=args.small)
            else:
                raise SystemExit(f"unknown corpus {name!r}")
            corpora.append(corpus)
        for corpus in corpora:
            print(  # noqa: T201 - CLI output
                f"corpus {corpus.name}: {len(corpus.files)} instances, "
                f"{corpus.total_bytes / 1e6:.1f} MB, {len(corpus.contexts)} contexts",
                flush=True,
            )
        for repeat in range(args.repeats):
            for corpus in corpora:
                config = scratch / f"storescu-{corpus.name}.cfg"
                config.write_text(storescu_config(corpus.contexts))
                for assoc in associations:
                    # Alternate receivers, rotating who goes first in each repeat.
                    shift = repeat % len(receivers)
                    for name in receivers[shift:] + receivers[:shift]:
                        try:
                            result = run_once(
                                name, corpus, associations=assoc, repeat=repeat,
                                config=config, scratch=scratch, start=starters[name],
                            )  # fmt: skip
                        except BenchError as exc:
                            what = f"repeat {repeat} {corpus.name} x{assoc} {name}"
                            failures.append(f"{what}: {exc}")
                            print(f"FAILED {failures[-1]}", flush=True)  # noqa: T201
                            continue
                        results.append(result)
                        print(  # noqa: T201 - CLI output
                            f"repeat {repeat} {corpus.name:5} x{assoc} {name:7} "
                            f"{result.instances_per_s:7.1f} inst/s {result.mb_per_s:7.1f} MB/s "
                            f"{result.cpu_s_per_instance:.4f} CPU s/inst",
                            flush=True,
                        )
    rows = summarize(results)
    print(format_table(rows))  # noqa: T201 - CLI output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "cpus": os.cpu_count(),
                "summary": [asdict(r) for r in rows],
                "runs": [asdict(r) for r in results],
                "failures": failures,
            },
            indent=2,
        )
    )
    print(f"results: {out}")  # noqa: T201 - CLI output
    for failure in failures:
        print(f"FAILED {failure}")  # noqa: T201 - CLI output
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
