"""The node's ingest side: spool sink, stability watcher and its SCP processes.

``start_node_scp`` cleans the spool, starts the stability watcher, opens the DICOM
port and serves it from this process (:mod:`dicom_scp.ae`) and, when the settings
ask for more, from a pool of extra processes (:mod:`dicom_scp.listeners`);
``run_scp`` is what ``triage-node scp`` runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_scp.ae import open_listening_socket, spool_sink, start_scp
from dicom_scp.listeners import ListenerPool
from dicom_scp.pynetdicom_tweaks import chunked_receive
from dicom_scp.queue import CeleryTriageQueue
from dicom_scp.sink import SpoolSink, clean_stale_temp_files, incoming_dir
from dicom_scp.watcher import StabilityWatcher
from worklist.core.contracts import TriageQueue
from worklist.core.settings import Settings

log = logging.getLogger(__name__)


def scp_process_count(settings: Settings) -> int:
    """How many processes serve the DICOM port.

    ``settings.scp_processes``, but never more than ``settings.max_associations``:
    a process that may not hold one association is of no use.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    int
        At least 1.
    """
    return max(1, min(settings.scp_processes, settings.max_associations))


def _no_restore() -> None:
    """Nothing to restore (chunked receive off)."""


@dataclass
class NodeScp:
    """A running SCP with its sink, triage queue and stability watcher."""

    server: ThreadedAssociationServer
    sink: SpoolSink
    watcher: StabilityWatcher
    queue: TriageQueue
    restore_receive: Callable[[], None] = field(default=_no_restore, repr=False)
    listeners: ListenerPool | None = None
    """The extra SCP processes on the same port, if any."""
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop accepting associations, stop the watcher, close the queue."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.listeners is not None:
                self.listeners.stop()
            self.server.shutdown()
        finally:
            self.restore_receive()
            self.watcher.stop()
            close = getattr(self.queue, "close", None)
            if callable(close):
                close()
        log.info("DICOM SCP stopped")


def start_node_scp(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    queue: TriageQueue | None = None,
    receive_into_files: bool = True,
    processes: int = 1,
) -> NodeScp:
    """Start the node's ingest side: spool sink, stability watcher and SCP.

    Stale temp files are removed from the spool first. The database must be
    migrated already. Datasets are received into files in the spool's incoming
    directory (:func:`~dicom_scp.pynetdicom_tweaks.chunked_receive`) until ``stop()``.

    The listening socket is opened here (:func:`~dicom_scp.ae.open_listening_socket`:
    a port in use is a :class:`~dicom_scp.ae.PortInUseError`). With
    ``processes`` above 1, ``processes - 1`` more SCP processes
    (:class:`~dicom_scp.listeners.ListenerPool`) accept from it too; only this one
    cleans the spool and runs the watcher.

    Parameters
    ----------
    settings : Settings
    session_factory : sessionmaker
        The process's session factory.
    queue : TriageQueue, optional
        Default: :class:`~dicom_scp.queue.CeleryTriageQueue` on the settings' broker.
    receive_into_files : bool
        Receive datasets into files in the spool (default) rather than in memory.
    processes : int
        How many processes serve the DICOM port (see
        :func:`scp_process_count`).

    Returns
    -------
    NodeScp
        Running; call ``stop()``.
    """
    spool = settings.spool_dir.absolute()
    spool.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(spool)
    sink = spool_sink(settings, session_factory)
    queue = queue if queue is not None else CeleryTriageQueue(settings)
    watcher = StabilityWatcher(
        session_factory,
        queue,
        quiet_seconds=settings.stable_seconds,
        poll_seconds=settings.stability_poll_seconds,
    ).start()
    restore_receive = chunked_receive(incoming_dir(spool)) if receive_into_files else _no_restore
    listen_socket = None
    listeners = None
    try:
        listen_socket = open_listening_socket(settings.dicom_host, settings.dicom_port)
        if processes > 1:
            # The extra processes first, ready before this one answers: from the
            # first association on, every process takes its share.
            listeners = ListenerPool(settings, listen_socket, processes).start()
        server = start_scp(
            settings, sink, block=False, listen_socket=listen_socket, processes=processes
        )
    except BaseException:
        if listeners is not None:
            listeners.stop()
        if listen_socket is not None:
            listen_socket.close()
        restore_receive()
        watcher.stop()
        raise
    if server is None:  # pragma: no cover - block=False always returns the server
        raise RuntimeError("the SCP did not start")
    return NodeScp(
        server=server,
        sink=sink,
        watcher=watcher,
        queue=queue,
        restore_receive=restore_receive,
        listeners=listeners,
    )


def run_scp(settings: Settings, *, stop: threading.Event | None = None) -> None:
    """Run the SCP and the stability watcher until SIGTERM, SIGINT or ``stop``.

    Creates the process's engine and session factory once; migrations are the
    caller's business (``triage-node db upgrade``).

    Parameters
    ----------
    settings : Settings
    stop : threading.Event, optional
        Set it to stop (signals are only installed from the main thread).
    """
    from worklist.core.db import open_database

    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("received signal %s, stopping the SCP", signum)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings)
    node: NodeScp | None = None
    try:
        node = start_node_scp(
            settings, database.session_factory, processes=scp_process_count(settings)
        )
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        log.info("interrupted, stopping the SCP")
    finally:
        if node is not None:
            node.stop()
        database.dispose()
        for number, handler in previous.items():
            signal.signal(number, handler)
