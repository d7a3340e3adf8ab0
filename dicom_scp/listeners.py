"""Extra SCP processes sharing the DICOM port, so concurrent associations use every core.

One Python process serves its associations one bytecode at a time (the GIL), so
four senders at once get little more than one. The node therefore runs
``settings.scp_processes`` processes that accept from one listening socket, opened
once by the main process (:func:`dicom_scp.ae.open_listening_socket`) and handed to the others,
as pre-forking servers do. Every process waits on it; whichever gets to
``accept()`` first takes the connection, which tends to be the least busy one. The
main process keeps everything that must run once (stale-file clean-up at start-up,
the stability watcher); the extra ones, started here, only receive: each has its
own database engine, spool sink and pynetdicom AE, with the same settings.

Each extra process dies with the main one (``PR_SET_PDEATHSIG`` on Linux, and a
parent check every second elsewhere), so a killed node never leaves a listener
behind on its port, and a listener that exits on its own is started again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType

from dicom_scp.ae import associations_per_process, spool_sink, start_scp
from dicom_scp.pynetdicom_tweaks import chunked_receive
from dicom_scp.sink import incoming_dir
from worklist.core.db import open_database
from worklist.core.logs import configure_logging
from worklist.core.processes import die_with_parent
from worklist.core.settings import Settings

log = logging.getLogger(__name__)

_RESTART_CHECK_S = 1.0
_STOP_TIMEOUT_S = 10.0
_READY_TIMEOUT_S = 60.0


def serve_listener(
    settings: Settings,
    listen_socket: socket.socket,
    processes: int,
    parent_pid: int,
    ready: EventType | None = None,
) -> None:
    """Body of one extra SCP process: receive on the shared port until told to stop.

    Parameters
    ----------
    settings : Settings
    listen_socket : socket.socket
        The node's listening socket (:func:`dicom_scp.ae.open_listening_socket`).
    processes : int
        How many processes share the port (for this one's association limit).
    parent_pid : int
        The main node process; this one stops when it is gone.
    ready : multiprocessing.Event, optional
        Set once this process accepts associations.
    """
    die_with_parent(parent_pid)
    configure_logging(settings.log_level, with_process=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    database = open_database(settings)
    sink = spool_sink(settings, database.session_factory)
    restore = chunked_receive(incoming_dir(sink.spool_dir))
    server = start_scp(
        settings, sink, listen_socket=listen_socket, processes=processes, announce=False
    )
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(_RESTART_CHECK_S):
            if os.getppid() != parent_pid:
                log.warning("the main node process is gone: stopping this SCP process")
                break
    finally:
        if server is not None:
            server.shutdown()
        restore()
        database.dispose()


@dataclass
class ListenerPool:
    """The extra SCP processes of a node, restarted when one exits on its own.

    Parameters
    ----------
    settings : Settings
    listen_socket : socket.socket
        The node's listening socket (:func:`dicom_scp.ae.open_listening_socket`).
    processes : int
        How many processes share the port in all, the main one included; the pool
        runs ``processes - 1``.
    """

    settings: Settings
    listen_socket: socket.socket
    processes: int
    _children: list[BaseProcess] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> ListenerPool:
        """Start the processes, wait until they listen, start the thread that restarts them.

        Raises
        ------
        RuntimeError
            When one of them exits or is not listening after a minute; the others
            are stopped.
        """
        context = multiprocessing.get_context("spawn")
        readiness = [context.Event() for _ in range(1, self.processes)]
        self._children = [
            self._spawn(index, ready) for index, ready in enumerate(readiness, start=1)
        ]
        deadline = time.monotonic() + _READY_TIMEOUT_S
        for child, ready in zip(self._children, readiness, strict=True):
            while not ready.wait(0.1):
                if not child.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SCP process {child.name} did not start listening "
                        f"(exit code {child.exitcode}); see its log lines above"
                    )
        if self._children:
            self._supervisor = threading.Thread(
                target=self._supervise, name="scp-listeners", daemon=True
            )
            self._supervisor.start()
            log.info(
                "DICOM port shared by %d SCP processes, at most %d associations each",
                self.processes,
                associations_per_process(self.settings, self.processes),
            )
        return self

    def alive(self) -> int:
        """How many extra processes are running now."""
        return sum(1 for child in self._children if child.is_alive())

    def stop(self) -> None:
        """SIGTERM every process, wait for them, SIGKILL what is left."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=_STOP_TIMEOUT_S)
        for child in self._children:
            if child.is_alive():
                child.terminate()
        for child in self._children:
            child.join(timeout=_STOP_TIMEOUT_S)
            if child.is_alive():
                log.warning("SCP process %s did not stop: killing it", child.name)
                child.kill()
                child.join(timeout=_STOP_TIMEOUT_S)

    def _spawn(self, index: int, ready: EventType | None = None) -> BaseProcess:
        context = multiprocessing.get_context("spawn")
        child = context.Process(
            target=serve_listener,
            args=(self.settings, self.listen_socket, self.processes, os.getpid(), ready),
            name=f"scp-{index}",
            daemon=True,
        )
        child.start()
        return child

    def _supervise(self) -> None:
        while not self._stop.wait(_RESTART_CHECK_S):
            for i, child in enumerate(self._children):
                if child.is_alive() or self._stop.is_set():
                    continue
                log.error(
                    "SCP process %s exited with %s: starting it again",
                    child.name,
                    child.exitcode,
                )
                self._children[i] = self._spawn(i + 1)
