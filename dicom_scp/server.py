"""The node's DICOM Application Entity: building it, starting it, running it.

``build_ae`` configures the AE (contexts, limits, timeouts), ``event_handlers``
binds the thin handlers to their dependencies, ``start_scp`` serves them,
``start_node_scp`` adds the spool sink and the stability watcher, and ``run_scp``
is what ``triage-node scp`` runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import sessionmaker

from dicom_scp.contexts import supported_contexts
from dicom_scp.handlers import (
    close_after_abort,
    handle_association_request,
    handle_echo,
    handle_store,
)
from dicom_scp.listeners import (
    ListenerPool,
    associations_per_process,
    open_listening_socket,
    scp_process_count,
)
from dicom_scp.queue import CeleryTriageQueue
from dicom_scp.receive_files import guard_receive_files
from dicom_scp.sink import InstanceSink, SpoolSink, clean_stale_temp_files, incoming_dir
from dicom_scp.socket_reads import read_pdus_in_full
from dicom_scp.watcher import StabilityWatcher
from worklist.settings import Settings
from worklist.stability import TriageQueue

log = logging.getLogger(__name__)

DIMSE_TIMEOUT_S = 120.0
"""Seconds to wait for the next DIMSE message on an association."""
MAX_PDU_BYTES = 1048576
"""Largest P-DATA-TF PDU the node accepts: fewer, larger PDUs cost less per byte."""


class NodeAE(AE):
    """pynetdicom's AE whose association limit counts associations, not connections.

    pynetdicom compares ``maximum_associations`` with every live acceptor thread,
    including connections that have not (yet, or ever) sent an A-ASSOCIATE-RQ, so
    a few idle connections refused every real sender ("local limit exceeded").
    Here a connection takes a slot only once its A-ASSOCIATE-RQ has arrived (and
    passed the allow-lists, checked first by ``EVT_REQUESTED``).
    """

    @property
    def active_associations(self) -> list[Any]:
        """Requestor associations and acceptors that received their A-ASSOCIATE-RQ."""
        return [
            assoc
            for assoc in super().active_associations
            if not assoc.is_acceptor or assoc.requestor.primitive is not None
        ]


class SharedSocketAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket that several processes share.

    The socket comes from :func:`dicom_scp.listeners.open_listening_socket`,
    already bound, listening and non-blocking: this server neither binds it nor,
    when it stops, shuts it down (that would stop the other processes too); it only
    closes its own handle.

    A connection from an address outside ``settings.allowed_peers`` is closed at
    ``accept()``, before it costs a thread. With TLS, the handshake runs in the
    connection's own thread within the ACSE timeout, not in the accepting thread,
    where a silent client stopped every other connection of the process.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`pynetdicom.transport.AssociationServer`.
    listen_socket : socket.socket
        The shared listening socket.
    settings : Settings, optional
        For the peer allow-list and the handshake timeout.
    """

    def __init__(
        self,
        *args: Any,
        listen_socket: socket.socket,
        settings: Settings | None = None,
        **kwargs: Any,
    ) -> None:
        self._listen_socket = listen_socket
        self._settings = settings
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; with TLS, wrap without the handshake (see :meth:`process_request_thread`)."""
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close) a connection from a peer address the allow-list does not hold."""
        if self._settings is None or self._settings.peer_allowed(str(client_address[0])):
            return True
        log.warning("refusing connection from %s: address not allowed", client_address[0])
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Complete the TLS handshake (within the ACSE timeout), then serve the association."""
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.ae.acse_timeout)
                request.do_handshake()
                request.settimeout(self.ae.network_timeout)
            except (OSError, ValueError) as exc:
                log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def server_bind(self) -> None:
        """Use the shared socket instead of binding a new one."""
        if self.socket is not None:
            self.socket.close()  # the one socketserver made for us, unused
        self.socket = self._listen_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Nothing to do: the shared socket is listening already."""

    def server_close(self) -> None:
        """Close this process's handle only."""
        if self.socket is not None:
            self.socket.close()


def build_ae(settings: Settings, *, processes: int = 1) -> AE:
    """Configure the node's Application Entity (not yet serving).

    Verification and every storage SOP class with the transfer syntaxes of
    :mod:`dicom_scp.contexts`; only our own called AE title; this process's share
    of ``settings.max_associations`` concurrent associations; ACSE, DIMSE and
    network timeouts.

    Parameters
    ----------
    settings : Settings
    processes : int
        How many processes share the DICOM port (each gets its share of the
        association limit).

    Returns
    -------
    pynetdicom.AE
    """
    ae = NodeAE(ae_title=settings.ae_title)
    ae.supported_contexts = supported_contexts()
    ae.require_called_aet = True
    ae.maximum_associations = associations_per_process(settings, processes)
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = settings.network_timeout_seconds
    ae.maximum_pdu_size = MAX_PDU_BYTES
    return ae


def event_handlers(settings: Settings, sink: InstanceSink) -> list[tuple[Any, ...]]:
    """Bind the handlers to their dependencies.

    Parameters
    ----------
    settings : Settings
        For the association allow-lists.
    sink : InstanceSink
        Where received instances go.

    Returns
    -------
    list of tuple
        ``(event, handler[, args])`` items for ``AE.start_server``.
    """
    return [
        (evt.EVT_REQUESTED, handle_association_request, [settings]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [sink]),
        (evt.EVT_PDU_SENT, close_after_abort),
    ]


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Build the server's TLS context when ``tls_cert``/``tls_key`` are set.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    ssl.SSLContext or None
        TLS 1.2 or newer; client certificates required (and checked against
        ``tls_ca``) when ``tls_ca`` is set. None when TLS is off.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(settings.tls_cert), keyfile=str(settings.tls_key))
    if settings.tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(settings.tls_ca))
    return context


def start_scp(
    settings: Settings,
    sink: InstanceSink,
    *,
    block: bool = False,
    listen_socket: socket.socket | None = None,
    processes: int = 1,
    announce: bool = True,
) -> ThreadedAssociationServer | None:
    """Serve C-ECHO and C-STORE on ``settings.dicom_host:dicom_port``.

    Parameters
    ----------
    settings : Settings
    sink : InstanceSink
        Where received instances go.
    block : bool
        Serve in this thread until interrupted (returns None) instead of in a
        background thread.
    listen_socket : socket.socket, optional
        Accept from this socket, shared with the node's other SCP processes
        (:mod:`dicom_scp.listeners`), instead of binding the address.
    processes : int
        How many processes share the port, for this one's association limit.
    announce : bool
        Log the listening address at INFO (the main process does; the extra
        ones don't repeat it).

    Returns
    -------
    ThreadedAssociationServer or None
        The running server (call ``shutdown()`` to stop it); None when ``block``.
    """
    read_pdus_in_full()
    ae = build_ae(settings, processes=processes)
    context = ssl_context(settings)
    if announce:
        log.info(
            "DICOM SCP %s listening on %s:%s%s (%d storage SOP classes)",
            settings.ae_title,
            settings.dicom_host,
            settings.dicom_port,
            " with TLS" if context else "",
            len(ae.supported_contexts) - 1,
        )
    address = (settings.dicom_host, settings.dicom_port)
    handlers = event_handlers(settings, sink)
    if listen_socket is None:
        return ae.start_server(address, block=block, evt_handlers=handlers, ssl_context=context)
    server = ae.make_server(
        address,
        evt_handlers=handlers,
        ssl_context=context,
        server_class=SharedSocketAssociationServer,
        listen_socket=listen_socket,
        settings=settings,
    )
    if block:
        server.serve_forever()
        return None
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # as ae.start_server does; server.shutdown() removes it
    return server


def chunked_receive(directory: Path) -> Callable[[], None]:
    """Have pynetdicom receive C-STORE datasets into files in ``directory``.

    Sets pynetdicom's ``_config.STORE_RECV_CHUNKED_DATASET``: each dataset is
    written, File Meta first, to a temporary file while it arrives, instead of
    being gathered in memory, and the handler gets its path
    (``event.dataset_path``). pynetdicom creates that file with
    :class:`tempfile.NamedTemporaryFile` in the default temporary directory, so
    ``tempfile.tempdir`` is set to ``directory``; both are process-wide. With
    ``directory`` inside the spool the sink fsyncs and renames the file into place
    instead of writing the dataset a second time. pynetdicom removes the file after
    the handler returns unless the sink has moved it. A write that fails (a full
    disk) removes the partial file at once and the C-STORE is refused with 0xA700
    (:mod:`dicom_scp.receive_files`).

    Parameters
    ----------
    directory : Path
        Where datasets are received; created when missing. Use
        :func:`dicom_scp.sink.incoming_dir` of the spool.

    Returns
    -------
    callable
        Restores both settings as they were.
    """
    directory.mkdir(parents=True, exist_ok=True)
    previous = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(directory)
    unguard = guard_receive_files()

    def restore() -> None:
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = previous
        unguard()

    return restore


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
    session_factory: sessionmaker,
    *,
    queue: TriageQueue | None = None,
    receive_into_files: bool = True,
    processes: int = 1,
) -> NodeScp:
    """Start the node's ingest side: spool sink, stability watcher and SCP.

    Stale temp files are removed from the spool first. The database must be
    migrated already. Datasets are received into files in the spool's incoming
    directory (:func:`chunked_receive`) until ``stop()``.

    The listening socket is opened here (:func:`~dicom_scp.listeners.open_listening_socket`:
    a port in use is a :class:`~dicom_scp.listeners.PortInUseError`). With
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
        :func:`dicom_scp.listeners.scp_process_count`).

    Returns
    -------
    NodeScp
        Running; call ``stop()``.
    """
    spool = settings.spool_dir.absolute()
    spool.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(spool)
    sink = SpoolSink(
        spool,
        session_factory,
        settings.min_free_mb,
        abandoned_after_s=settings.network_timeout_seconds + DIMSE_TIMEOUT_S,
        resent_policy=settings.resent_instance_policy,
    )
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
    from worklist.db import make_engine, make_session_factory

    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("received signal %s, stopping the SCP", signum)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    node: NodeScp | None = None
    try:
        node = start_node_scp(
            settings, make_session_factory(engine), processes=scp_process_count(settings)
        )
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        log.info("interrupted, stopping the SCP")
    finally:
        if node is not None:
            node.stop()
        engine.dispose()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
