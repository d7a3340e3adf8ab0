"""Time to triage: from the end of ``storescu`` to the SR stored at a dcmtk ``storescp``.

The node runs as in production: the SCP and stability watcher in this process (as
``triage-node serve`` does), the Celery workers as subprocesses
(:func:`triage.worker.start_embedded_worker`: one inference worker with
``--inference-concurrency`` pool processes, default the setting
``inference_processes``, and one delivery worker, concurrency 4 in embedded mode and
2 in Redis mode, where ``redis://`` is the broker). A dcmtk ``storescp`` acts as the PACS.

Each study is a copy of the real chest radiograph ``RG1_J2KI.dcm`` (CR, 1955x1841,
JPEG 2000, so decoding is included) with new UIDs, sent alone with ``storescu``;
the next one is sent when the previous SR has arrived. First, not counted, one batch
of studies (``inference_batch_studies``) per inference process is sent at once, so that
every process has loaded the model.
For each study:

- ``total``: end of ``storescu`` -> SR file written by ``storescp`` (its mtime);
- ``minus_quiet``: ``total`` minus the quiet period (``--stable-seconds``);
- ``stable_to_sr``: the study's ``stable_at`` (when the watcher found it stable,
  from the database) -> SR stored at the PACS: the goal is p95 <= 1.5 s on 2 cores.

Burst mode (``--burst N``, default 40; 0 turns it off): after the sequential studies,
N fresh copies are sent at once in one ``storescu`` association, as a PACS does when
it empties its queue after an outage. Reported: when the last SR lands after the end
of ``storescu``, minus the quiet period (``last_minus_quiet``: the goal is at most
3 s on 2 cores), the burst's per-study ``stable_to_sr``, and the CPU each process
spent on the burst, per study (``cpu_ms_per_study``: node, inference worker, its
pool processes and decode children, delivery worker, the PACS).

Also measured: inference throughput of the ONNX model on CPU (images/s) at batch 1
and 8, and the preprocessing time of the radiograph.

Usage::

    python bench/time_to_triage.py --mode embedded --studies 25
    python bench/time_to_triage.py --mode redis --redis-url redis://127.0.0.1:6379/12
    python bench/time_to_triage.py --mode both --json bench/results/time_to_triage.json
    python bench/time_to_triage.py --mode embedded --studies 10 --burst 40 \
        --inference-concurrency 1,2    # the burst with one and with two inference processes
    python bench/time_to_triage.py --mode embedded --studies 15 --burst 40 \
        --inference-concurrency 1,2 --batch-studies 1,8   # and without/with batching
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.time_to_triage")

DEFAULT_SOURCE = (REPO / ".." / "shared" / "data" / "dicom" / "real" / "RG1_J2KI.dcm").resolve()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of ``values``."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, mean, min, max in seconds."""
    return {
        "p50": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "mean": round(statistics.fmean(values), 4) if values else float("nan"),
        "min": round(min(values), 4) if values else float("nan"),
        "max": round(max(values), 4) if values else float("nan"),
    }


def make_copy(source: Path, target: Path) -> str:
    """Copy ``source`` with new Study/Series/SOP Instance UIDs; return the study UID."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target)
    return str(ds.StudyInstanceUID)


def wait_for(predicate: Any, timeout: float, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until truthy or ``timeout``; return its value (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def _ts(value: datetime) -> float:
    """POSIX timestamp of a database datetime (naive ones are UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def study_row(session_factory: Any, study_uid: str, t_sent: float, t_sr: float) -> dict[str, Any]:
    """The timings of one study from the database, given when it was sent and its SR landed."""
    from sqlalchemy import select

    from worklist.tables import Study, TriageResult

    with session_factory() as session:
        stable_at, result = session.execute(
            select(Study.stable_at, TriageResult)
            .join(TriageResult, TriageResult.study_id == Study.id)
            .where(Study.study_instance_uid == study_uid)
        ).one()
    stable_ts, started_ts, finished_ts = (
        _ts(stable_at),
        _ts(result.started_at),
        _ts(result.finished_at),
    )
    return {
        "total": t_sr - t_sent,
        "stable_to_sr": t_sr - stable_ts,
        "stable_to_started": started_ts - stable_ts,
        "triage_task": finished_ts - started_ts,
        "finished_to_sr": t_sr - finished_ts,
        "decision": result.decision,
    }


def _proc_cpu(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command line, CPU seconds) of a live process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / ticks


def cpu_by_role(root: int, pacs_pid: int) -> dict[str, float]:
    """CPU seconds so far of the node's processes, by role: ``node`` (this process: the
    SCP, the stability watcher and the benchmark's own polling), the inference worker
    (``inference-main``, its pool processes ``inference-pool``, their decode children
    ``decode-child``), ``delivery`` and the ``pacs`` (dcmtk storescp)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc_cpu(int(entry.name))) is not None:
            procs[int(entry.name)] = info
    roles: dict[str, float] = {}

    def add(role: str, seconds: float) -> None:
        roles[role] = round(roles.get(role, 0.0) + seconds, 3)

    def under(pid: int, ancestor: int) -> bool:
        while pid in procs and pid > 1:
            if pid == ancestor:
                return True
            pid = procs[pid][0]
        return False

    for pid, (ppid, cmdline, seconds) in procs.items():
        if pid == root:
            add("node", seconds)
        elif pid == pacs_pid:
            add("pacs", seconds)
        elif not under(pid, root):
            continue
        elif "triage.guarded_decode" in cmdline:
            add("decode-child", seconds)
        elif "--queues delivery" in cmdline:
            add("delivery", seconds)
        elif "--queues inference" in cmdline:
            add("inference-main" if ppid == root else "inference-pool", seconds)
    return roles


class Pacs:
    """dcmtk storescp writing into a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "PACS", "+xa", "-od", str(directory), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ok = wait_for(
            lambda: (
                subprocess.run(
                    ["echoscu", "-aec", "PACS", "-to", "2", "127.0.0.1", str(self.port)],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            ),
            timeout=20,
            interval=0.1,
        )
        if not ok:
            raise RuntimeError("storescp did not start")

    def find(self, sop_uid: str) -> Path | None:
        for path in self.directory.iterdir():
            if sop_uid in path.name:
                return path
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run_mode(
    mode: str,
    *,
    studies: int,
    source: Path,
    stable_seconds: float,
    poll_seconds: float,
    redis_url: str,
    database_url: str,
    model_path: Path | None,
    workdir: Path,
    burst: int = 0,
    inference_concurrency: int = 1,
    batch_studies: int | None = None,
    broker_poll_seconds: float = 0.02,
) -> dict[str, Any]:
    """Run one mode (``embedded`` or ``redis``); return its measurements."""
    from dicom_scp.server import start_node_scp
    from triage.sr import sr_uids
    from triage.worker import start_embedded_worker
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.migrate import upgrade
    from worklist.core.settings import load_settings

    root = workdir / f"{mode}-x{inference_concurrency}-b{batch_studies}"
    pacs = Pacs(root / "pacs")
    overrides: dict[str, Any] = {
        "data_dir": root / "node",
        "dicom_host": "127.0.0.1",
        "dicom_port": free_port(),
        "min_free_mb": 0,
        "stable_seconds": stable_seconds,
        "stability_poll_seconds": poll_seconds,
        "destinations": f"PACS@127.0.0.1:{pacs.port}",
    }
    if model_path is not None:
        overrides["model_path"] = model_path
    if batch_studies is not None:
        overrides["inference_batch_studies"] = batch_studies
    if database_url:
        overrides["database_url"] = database_url
    if mode == "redis":
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete("inference", "delivery")
        overrides["broker_url"] = redis_url
    settings = load_settings(**overrides)
    upgrade(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    session_factory = make_session_factory(engine)
    scp = start_node_scp(settings, session_factory)
    fast = {"TRIAGE_BROKER_POLL_SECONDS": str(broker_poll_seconds), "TRIAGE_SWEEP_SECONDS": "1"}
    # The same two worker processes in both modes; only the broker differs.
    delivery = {"embedded": 4, "redis": 2}[mode]
    workers = start_embedded_worker(
        settings,
        inference_concurrency=inference_concurrency,
        delivery_concurrency=delivery,
        extra_env=fast,
    )
    rows: list[dict[str, Any]] = []
    burst_report: dict[str, Any] | None = None
    try:
        # Warm-up, not counted: one batch of studies per inference process, sent at
        # once, so that each process has loaded the model, started its decode child and
        # built an SR.
        run_burst(
            max(1, inference_concurrency) * (settings.inference_batch_studies or 8),
            source=source,
            stable_seconds=stable_seconds,
            settings=settings,
            session_factory=session_factory,
            pacs=pacs,
            directory=root / "warm-up",
        )
        for i in range(1, studies + 1):
            path = root / "send" / f"study-{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            study_uid = make_copy(source, path)
            _series, sr_uid = sr_uids(study_uid, 1)
            out = subprocess.run(
                [
                    "storescu",
                    "-xw",
                    "-aec",
                    settings.ae_title,
                    "127.0.0.1",
                    str(settings.dicom_port),
                    str(path),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            t_sent = time.time()
            if out.returncode != 0:
                raise RuntimeError(f"storescu failed: {out.stderr}")
            arrived = wait_for(lambda uid=sr_uid: pacs.find(uid), timeout=120)
            if arrived is None:
                raise RuntimeError(f"no SR for study {i} within 120 s")
            # storescp renames the file when complete; wait until it is readable.
            time.sleep(0.02)
            t_sr = arrived.stat().st_mtime
            row = {
                "study": i,
                **study_row(session_factory, study_uid, t_sent, t_sr),
                "minus_quiet": t_sr - t_sent - stable_seconds,
            }
            rows.append(row)
            log.info(
                "%s study %d: %s",
                mode,
                i,
                {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
            )
        if burst > 0:
            burst_report = run_burst(
                burst,
                source=source,
                stable_seconds=stable_seconds,
                settings=settings,
                session_factory=session_factory,
                pacs=pacs,
                directory=root / "burst",
            )
    finally:
        workers.stop()
        scp.stop()
        pacs.stop()
        engine.dispose()
    return {
        "mode": mode,
        "inference_concurrency": inference_concurrency,
        "batch_studies": settings.inference_batch_studies or "auto",
        "burst": burst_report,
        "studies": len(rows),
        "stable_seconds": stable_seconds,
        "stability_poll_seconds": poll_seconds,
        "broker_poll_seconds": broker_poll_seconds,
        "database": "postgresql" if database_url.startswith("postgres") else "sqlite",
        **{
            key: summarize([r[key] for r in rows])
            for key in (
                "total",
                "minus_quiet",
                "stable_to_sr",
                "stable_to_started",
                "triage_task",
                "finished_to_sr",
            )
        },
        "rows": rows,
    }


def run_burst(
    count: int,
    *,
    source: Path,
    stable_seconds: float,
    settings: Any,
    session_factory: Any,
    pacs: Pacs,
    directory: Path,
) -> dict[str, Any]:
    """Send ``count`` studies at once (one ``storescu`` association); time their SRs.

    Returns
    -------
    dict
        ``last_minus_quiet`` (last SR stored -> end of ``storescu``, minus the
        quiet period), ``first_minus_quiet``, ``send_s`` (the ``storescu`` run) and
        the per-study ``stable_to_sr`` and ``triage_task`` summaries.
    """
    from triage.sr import sr_uids

    directory.mkdir(parents=True, exist_ok=True)
    studies = []
    for i in range(count):
        path = directory / f"burst-{i}.dcm"
        studies.append((path, make_copy(source, path)))
    sr_names = {uid: sr_uids(uid, 1)[1] for _, uid in studies}
    cpu_before = cpu_by_role(os.getpid(), pacs.proc.pid)
    t_start = time.time()
    out = subprocess.run(
        ["storescu", "-xw", "-aec", settings.ae_title, "127.0.0.1", str(settings.dicom_port)]
        + [str(path) for path, _ in studies],
        capture_output=True,
        text=True,
        check=False,
    )
    t_sent = time.time()
    if out.returncode != 0:
        raise RuntimeError(f"storescu failed: {out.stderr}")

    def all_arrived() -> dict[str, Path] | None:
        names = {path.name: path for path in pacs.directory.iterdir()}  # one listing a poll
        found = {
            uid: next((p for n, p in names.items() if sr in n), None)
            for uid, sr in sr_names.items()
        }
        return found if all(found.values()) else None  # type: ignore[return-value]

    arrived = wait_for(all_arrived, timeout=300, interval=0.05)
    if arrived is None:
        raise RuntimeError(f"not every SR of the burst of {count} arrived within 300 s")
    cpu_after = cpu_by_role(os.getpid(), pacs.proc.pid)
    cpu = {
        role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / count, 1)
        for role in sorted(cpu_after)
    }
    time.sleep(0.05)
    rows = [
        study_row(session_factory, uid, t_sent, arrived[uid].stat().st_mtime) for _, uid in studies
    ]
    landed = [t_sent + r["total"] for r in rows]
    report = {
        "studies": count,
        "send_s": round(t_sent - t_start, 3),
        "first_minus_quiet": round(min(landed) - t_sent - stable_seconds, 3),
        "last_minus_quiet": round(max(landed) - t_sent - stable_seconds, 3),
        "cpu_ms_per_study": cpu,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **{
            key: summarize([r[key] for r in rows])
            for key in ("stable_to_sr", "stable_to_started", "triage_task", "finished_to_sr")
        },
    }
    log.info("burst of %d: %s", count, report)
    return report


def throughput(model_path: Path | None, source: Path, seconds: float = 3.0) -> dict[str, Any]:
    """Images/s of the ONNX model on CPU at batch 1 and 8, and the preprocessing time."""
    import numpy as np

    from models.preprocess import preprocess_file
    from models.runtime import Classifier

    clf = Classifier.load(model_path, ["CPUExecutionProvider"])
    spec = clf.card.preprocess_spec
    prep_times = []
    for _ in range(5):
        t = time.perf_counter()
        x = preprocess_file(source, spec)
        prep_times.append(time.perf_counter() - t)
    out: dict[str, Any] = {
        "model": f"{clf.card.name} {clf.card.version}",
        "sha256": clf.sha256,
        "input": list(spec.shape),
        "providers": clf.active_providers,
        "preprocess_j2k_1955x1841_s": summarize(prep_times),
    }
    for batch in (1, 8):
        xb = np.repeat(x[None], batch, axis=0)
        clf.predict_logits(xb)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            clf.predict_logits(xb)
            n += batch
        out[f"images_per_s_batch{batch}"] = round(n / (time.perf_counter() - t0), 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print a summary and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument("--studies", type=int, default=25)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--stable-seconds", type=float, default=1.0)
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=0.05,
        help="stability watcher poll (the node's default, stability_poll_seconds, is 1.0)",
    )
    parser.add_argument(
        "--broker-poll-seconds",
        type=float,
        default=0.02,
        help="embedded broker poll (the node's default, broker_poll_seconds, is 0.1)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--database-url", default="", help="default: SQLite in the data dir")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument(
        "--burst", type=int, default=40, help="studies sent at once after the others (0: none)"
    )
    parser.add_argument(
        "--inference-concurrency",
        default="",
        help=(
            "inference worker processes (default: the setting inference_processes); "
            "a comma-separated list runs each in turn"
        ),
    )
    parser.add_argument(
        "--batch-studies",
        default="",
        help=(
            "studies an inference task triages together (default: the setting "
            "inference_batch_studies, 1 on CPU and 8 on a GPU; 1: no batching); a "
            "comma-separated list runs each in turn"
        ),
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            parser.error(f"dcmtk {tool} is required")
    workdir = Path(tempfile.mkdtemp(prefix="ttt-"))
    report: dict[str, Any] = {
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "source": str(args.source),
        "throughput": throughput(args.model, args.source),
        "modes": [],
    }
    modes = ["embedded", "redis"] if args.mode == "both" else [args.mode]
    concurrencies = [int(c) for c in str(args.inference_concurrency).split(",") if c.strip()]
    if not concurrencies:
        from worklist.core.settings import load_settings

        concurrencies = [load_settings().inference_processes]
    batches: list[int | None] = [int(b) for b in str(args.batch_studies).split(",") if b.strip()]
    try:
        for mode, concurrency, batch in [
            (m, c, b) for m in modes for c in concurrencies for b in batches or [None]
        ]:
            report["modes"].append(
                run_mode(
                    mode,
                    studies=args.studies,
                    source=args.source,
                    stable_seconds=args.stable_seconds,
                    poll_seconds=args.poll_seconds,
                    redis_url=args.redis_url,
                    database_url=args.database_url,
                    model_path=args.model,
                    workdir=workdir,
                    burst=args.burst,
                    inference_concurrency=concurrency,
                    batch_studies=batch,
                    broker_poll_seconds=args.broker_poll_seconds,
                )
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        (
            f"model {report['throughput']['model']} on {report['throughput']['providers']}, "
            f"{report['host']['cpus']} CPUs"
        ),
        (
            f"throughput: batch 1 {report['throughput']['images_per_s_batch1']} img/s, "
            f"batch 8 {report['throughput']['images_per_s_batch8']} img/s; preprocess J2K "
            f"p50 {report['throughput']['preprocess_j2k_1955x1841_s']['p50']} s"
        ),
    ]
    for m in report["modes"]:
        lines.append(
            f"{m['mode']:9s} x{m['inference_concurrency']} batch {m['batch_studies']} "
            f"n={m['studies']} "
            f"quiet={m['stable_seconds']}s  "
            f"total p50 {m['total']['p50']:.3f} p95 {m['total']['p95']:.3f} | "
            f"minus quiet p50 {m['minus_quiet']['p50']:.3f} p95 {m['minus_quiet']['p95']:.3f} | "
            f"stable->SR p50 {m['stable_to_sr']['p50']:.3f} p95 {m['stable_to_sr']['p95']:.3f}"
        )
        b = m["burst"]
        if b:
            lines.append(
                f"{'':9s} burst of {b['studies']}: sent in {b['send_s']:.2f} s; SRs from "
                f"quiet+{b['first_minus_quiet']:.2f} s to quiet+{b['last_minus_quiet']:.2f} s "
                f"(goal <= 3 s); triage task p50 {b['triage_task']['p50']:.3f} s"
            )
            lines.append(
                f"{'':9s} CPU ms per study: "
                + ", ".join(f"{k} {v:.0f}" for k, v in b["cpu_ms_per_study"].items())
                + f"; load average {b['load_average']}"
            )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
