"""Running the triage workers.

:func:`run_worker` runs one Celery worker in this process (blocking), for
``triage-node worker``. The pool follows the queues:

- ``inference`` (alone or with ``delivery``): the *prefork* pool, one ONNX Runtime
  session per pool process, prefetch 1. A pool process that dies mid-task has its
  message redelivered (``task_reject_on_worker_lost``).
- ``delivery`` alone: the *threads* pool (C-STORE is network-bound).

A worker that serves ``delivery`` also runs the sweep (due outbox rows, stalled
revisions) every ``sweep_seconds`` in a background thread.

:func:`start_embedded_worker` is the embedded mode of ``triage-node serve``: it
starts **two subprocesses** (``python -m triage.worker``), one for ``inference``
(``settings.inference_processes`` pool processes, so that a burst of studies is
triaged in parallel on the cores) and one for ``delivery``, passing the settings
through ``TRIAGE_*`` environment variables. Subprocesses rather than threads
because Celery's worker owns signal handling and its process pool, ONNX Runtime
and the GPU are best kept out of the SCP's process, and a crash of a worker must
not take the SCP down. The handle's :meth:`EmbeddedWorker.stop` asks both for a
warm shutdown (SIGTERM) and kills them after a grace period.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from celery import Celery
from celery.signals import worker_ready
from pydantic import SecretStr

from triage.celery_app import make_celery
from triage.tasks import sweep
from worklist.core.contracts import DELIVERY_QUEUE, INFERENCE_QUEUE
from worklist.core.logs import configure_logging
from worklist.core.settings import Settings, load_settings

__all__ = ["EmbeddedWorker", "main", "run_worker", "settings_to_env", "start_embedded_worker"]

log = logging.getLogger(__name__)


class _Sweeper(threading.Thread):
    """Background thread calling :func:`triage.tasks.sweep` every ``period`` seconds."""

    def __init__(self, app: Celery, period: float) -> None:
        super().__init__(name="triage-sweeper", daemon=True)
        self.app = app
        self.period = period
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                counts = sweep(self.app)
                if any(counts.values()):
                    log.info("sweep sent %s", counts)
            except Exception as exc:  # noqa: BLE001 - keep sweeping through DB/broker hiccups
                log.warning("sweep failed: %s", exc)
            self.stopped.wait(self.period)


def run_worker(
    settings: Settings, queues: Sequence[str], concurrency: int = 1, *, verbose: bool = False
) -> None:
    """Run a triage worker in this process until it is stopped (blocking).

    Migrations are already applied by the caller.

    Parameters
    ----------
    settings : Settings
    queues : sequence of str
        ``inference``, ``delivery`` or both.
    concurrency : int
        Pool processes (inference) or threads (delivery).
    verbose : bool
        Print Celery's banner (queues, tasks, transport); off by default.
    """
    queues = [q.strip() for q in queues if q.strip()]
    unknown = set(queues) - {INFERENCE_QUEUE, DELIVERY_QUEUE}
    if not queues or unknown:
        raise ValueError(f"queues must be among inference, delivery; got {queues}")
    app = make_celery(settings)
    pool = "prefork" if INFERENCE_QUEUE in queues else "threads"
    sweeper = None
    if DELIVERY_QUEUE in queues:
        sweeper = _Sweeper(app, settings.sweep_seconds)
        sweeper.start()
    log.info(
        "triage worker: queues %s, pool %s x%s, broker %s",
        ",".join(queues),
        pool,
        concurrency,
        "embedded"
        if settings.uses_embedded_broker
        else settings.effective_broker_url.split("@")[-1],
    )
    argv = [
        *([] if verbose else ["--quiet"]),
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={max(1, int(concurrency))}",
        f"--pool={pool}",
        f"--hostname={'-'.join(queues)}.{os.getpid()}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--prefetch-multiplier=1",
    ]
    names = ",".join(queues)

    def _ready(**_: object) -> None:
        # Celery's own "ready." line is part of the chatter --quiet hides; operators and
        # the tests still need one line that says the worker takes tasks.
        log.info("triage worker %s ready.", names)

    worker_ready.connect(_ready, weak=False)
    try:
        app.worker_main(argv=argv)
    finally:
        worker_ready.disconnect(_ready)
        if sweeper is not None:
            sweeper.stopped.set()


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The ``TRIAGE_*`` environment variables that rebuild ``settings`` in a child.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    dict of str
    """
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list | tuple):
            # Destination.__str__ is its AE@host:port form.
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env[f"TRIAGE_{name.upper()}"] = text
    return env


class EmbeddedWorker:
    """Handle on the embedded worker subprocesses (see the module docstring).

    Attributes
    ----------
    processes : dict of str to subprocess.Popen
        ``{"inference": ..., "delivery": ...}``.
    """

    def __init__(self, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        self.processes = processes

    def alive(self) -> bool:
        """True while every worker subprocess runs."""
        return all(p.poll() is None for p in self.processes.values())

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown of both workers, then kill what is left after ``timeout``.

        Parameters
        ----------
        timeout : float
        """
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.processes.items():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded %s worker did not stop in %.0f s; killing it", name, timeout)
                proc.kill()
                proc.wait(timeout=10)


def start_embedded_worker(
    settings: Settings,
    *,
    inference_concurrency: int | None = None,
    delivery_concurrency: int = 4,
    extra_env: dict[str, str] | None = None,
    inherit_fds: Sequence[int] = (),
    verbose: bool = False,
) -> EmbeddedWorker:
    """Start the embedded workers (inference, delivery) as two subprocesses.

    Each dies with this process (``--parent-pid``: ``PR_SET_PDEATHSIG``, and their
    Celery pool processes die with them), so a node killed with SIGKILL leaves no
    worker taking tasks behind. Call it from the main thread.

    Parameters
    ----------
    settings : Settings
    inference_concurrency : int, optional
        Inference pool processes; default ``settings.inference_processes``.
    delivery_concurrency : int
    extra_env : dict, optional
        More environment for the children (tests).
    inherit_fds : sequence of int
        Descriptors the children keep open (the data directory's lock,
        :class:`worklist.core.processes.DataDirLock`).
    verbose : bool
        The workers print Celery's banner and start-up chatter.

    Returns
    -------
    EmbeddedWorker
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(settings_to_env(settings))
    env.update(extra_env or {})
    if inference_concurrency is None:
        inference_concurrency = settings.inference_processes
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for queue, concurrency in (
        (INFERENCE_QUEUE, inference_concurrency),
        (DELIVERY_QUEUE, delivery_concurrency),
    ):
        processes[queue] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "triage.worker",
                "--queues",
                queue,
                "--concurrency",
                str(concurrency),
                "--parent-pid",
                str(os.getpid()),
                *(["--verbose"] if verbose else []),
            ],
            env=env,
            pass_fds=tuple(inherit_fds),
        )
        log.info("embedded %s worker started (pid %s)", queue, processes[queue].pid)
    return EmbeddedWorker(processes)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m triage.worker --queues inference,delivery [--concurrency N] [--parent-pid P]``.

    Settings come from the environment (``TRIAGE_*``), as for ``triage-node``.

    Parameters
    ----------
    argv : sequence of str, optional

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m triage.worker")
    parser.add_argument("--queues", default=f"{INFERENCE_QUEUE},{DELIVERY_QUEUE}")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="die with this process (embedded mode)"
    )
    parser.add_argument("--verbose", action="store_true", help="Celery's banner and chatter")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        from worklist.core.processes import die_with_parent

        die_with_parent(args.parent_pid)
    settings = load_settings()
    configure_logging(settings.log_level, with_process=True, verbose=args.verbose)
    run_worker(settings, args.queues.split(","), args.concurrency, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
