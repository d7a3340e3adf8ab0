"""One process's DICOM SCP: the Application Entity, its handlers, TLS, the server.

``build_ae`` configures the AE (contexts, limits, timeouts), ``event_handlers``
binds the thin handlers to their dependencies, ``ssl_context`` builds TLS from the
settings and ``start_scp`` serves them, on its own address or on the listening
socket the node's SCP processes share (:func:`open_listening_socket`,
:class:`SharedSocketAssociationServer`). ``spool_sink`` is the sink every SCP
process of the node writes received instances to. The node's ingest side (spool
clean-up, stability watcher, extra processes) is :mod:`dicom_scp.server`.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_scp.contexts import supported_contexts
from dicom_scp.handlers import (
    close_after_abort,
    handle_association_request,
    handle_echo,
    handle_store,
)
from dicom_scp.pynetdicom_tweaks import read_pdus_in_full
from dicom_scp.sink import InstanceSink, SpoolSink
from worklist.core.settings import Settings

log = logging.getLogger(__name__)

DIMSE_TIMEOUT_S = 120.0
"""Seconds to wait for the next DIMSE message on an association."""
MAX_PDU_BYTES = 1048576
"""Largest P-DATA-TF PDU the node accepts: fewer, larger PDUs cost less per byte."""


class PortInUseError(RuntimeError):
    """Another program already listens on the DICOM port."""


def per_process_share(total: int, processes: int) -> int:
    """Each SCP process's share of a node-wide limit, rounded up.

    Parameters
    ----------
    total : int
        The node-wide limit (``max_associations``, ``max_connections_per_peer``).
    processes : int
        How many processes share the port.

    Returns
    -------
    int
        ``ceil(total / processes)``: the node as a whole never exceeds ``total`` by more
        than ``processes - 1``.
    """
    return -(-total // max(1, processes))


def associations_per_process(settings: Settings, processes: int) -> int:
    """Each process's share of ``settings.max_associations`` (:func:`per_process_share`)."""
    return per_process_share(settings.max_associations, processes)


class PeerConnections:
    """Open connections per peer address in one process, with a cap.

    A connection is open from its ``accept()`` until its pynetdicom association
    thread ends (association released, aborted, or the ACSE timeout closed it): the
    connections being handed to their thread are counted here, the live association
    threads by ``live`` once they have taken the connection (a connection in the
    instant between the two can slip past the count: in a burst the cap may be
    exceeded by one or two). Refusals are logged once per peer and
    :data:`REFUSAL_LOG_INTERVAL_S`, with their count, so that a flood of
    connections cannot flood the log too.

    Parameters
    ----------
    limit : int
        Connections one address may hold open at once in this process.
    live : callable
        ``live(peer)``: the peer's live association threads in this process.
    """

    REFUSAL_LOG_INTERVAL_S = 60.0

    def __init__(self, limit: int, live: Callable[[str], int]) -> None:
        self.limit = limit
        self._live = live
        self._starting: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, peer: str) -> bool:
        """Count a new connection of ``peer`` as starting; False (the refusal counted,
        and logged at most once an interval) when the peer holds its share already."""
        with self._lock:
            if self._starting[peer] + self._live(peer) < self.limit:
                self._starting[peer] += 1
                return True
            self._refused[peer] += 1
            now = time.monotonic()
            last = self._logged_at.get(peer)
            if last is not None and now - last < self.REFUSAL_LOG_INTERVAL_S:
                return False
            self._logged_at[peer] = now
            refused, self._refused[peer] = self._refused[peer], 0
        log.warning(
            "refusing connections from %s: it holds %d open connections, the most one "
            "address may hold in this SCP process (TRIAGE_MAX_CONNECTIONS_PER_PEER); "
            "%d refused since the last such line",
            peer,
            self.limit,
            refused,
        )
        return False

    def started(self, peer: str) -> None:
        """The connection admitted by :meth:`admit` has its association thread now (or
        is closed): ``live`` counts it from here on."""
        with self._lock:
            self._starting[peer] -= 1
            if self._starting[peer] <= 0:
                del self._starting[peer]


def open_listening_socket(host: str, port: int, *, backlog: int = 64) -> socket.socket:
    """Bind and listen on ``host:port`` for every SCP process of the node.

    The socket is non-blocking: all processes wait on it, one ``accept()`` wins and
    the others get nothing and go back to waiting.

    Parameters
    ----------
    host, port : str, int
        The DICOM address (``settings.dicom_host``, ``settings.dicom_port``).
    backlog : int
        Connections the kernel queues before the processes take them.

    Returns
    -------
    socket.socket
        Listening; close it after the last process stopped using it.

    Raises
    ------
    PortInUseError
        With the address, when another program (another node?) listens there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"DICOM port {host}:{port} is already in use by another program "
                "(another node?); stop it or set TRIAGE_DICOM_PORT"
            ) from exc
        raise
    return sock


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

    def connections_from(self, peer: str) -> int:
        """Open connections (associated or not) from ``peer``: acceptor threads whose
        state machine is past Sta1 (idle), where a connection the peer closed returns
        while its thread still waits out the ACSE timeout."""
        return sum(
            1
            for assoc in super().active_associations
            if assoc.is_acceptor
            and assoc.requestor.address == peer
            and assoc.dul.state_machine.current_state != "Sta1"
        )


class SharedSocketAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket that several processes share.

    The socket comes from :func:`open_listening_socket`,
    already bound, listening and non-blocking: this server neither binds it nor,
    when it stops, shuts it down (that would stop the other processes too); it only
    closes its own handle.

    A connection from an address outside ``settings.allowed_peers``, or from one
    that already holds its share of ``settings.max_connections_per_peer`` open
    connections (associated or not), is closed at ``accept()``, before it costs a
    thread. With TLS, the handshake runs in the
    connection's own thread within the ACSE timeout, not in the accepting thread,
    where a silent client stopped every other connection of the process.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`pynetdicom.transport.AssociationServer`.
    listen_socket : socket.socket
        The shared listening socket.
    settings : Settings, optional
        For the peer allow-list.
    peer_limit : int, optional
        Open connections one peer address may hold in this process (no cap when None).
    """

    def __init__(
        self,
        *args: Any,
        listen_socket: socket.socket,
        settings: Settings | None = None,
        peer_limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._listen_socket = listen_socket
        self._settings = settings
        self.peers = (
            PeerConnections(peer_limit, self._live_from) if peer_limit is not None else None
        )
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; with TLS, wrap without the handshake (see :meth:`process_request_thread`)."""
        if self.socket is None:
            raise OSError("the server's listening socket is closed")
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close) a connection from a peer address the allow-list does not hold,
        or from one holding its share of open connections; else take a slot for it
        (given back when its thread ends)."""
        peer = str(client_address[0])
        if self._settings is not None and not self._settings.peer_allowed(peer):
            log.warning("refusing connection from %s: address not allowed", peer)
            return False
        return self.peers is None or self.peers.admit(peer)

    def _live_from(self, peer: str) -> int:
        """Live acceptor association threads of this process from ``peer``."""
        ae = self.ae
        return ae.connections_from(peer) if isinstance(ae, NodeAE) else 0

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Complete the TLS handshake (within the ACSE timeout), then start the
        association's thread (pynetdicom's, which lives until the connection closes)."""
        try:
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
        finally:
            if self.peers is not None:
                self.peers.started(str(client_address[0]))

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
        (:func:`open_listening_socket`), instead of binding the address.
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
        peer_limit=per_process_share(settings.max_connections_per_peer, processes),
    )
    if block:
        server.serve_forever()
        return None
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # as ae.start_server does; server.shutdown() removes it
    return server


def spool_sink(settings: Settings, session_factory: sessionmaker[Session]) -> SpoolSink:
    """The sink an SCP process of the node writes received instances to.

    Parameters
    ----------
    settings : Settings
        ``spool_dir``, ``min_free_mb``, ``network_timeout_seconds`` and
        ``resent_instance_policy`` are used.
    session_factory : sessionmaker
        The process's session factory.

    Returns
    -------
    SpoolSink
        On the absolute spool directory; an association silent for longer than the
        network and DIMSE timeouts together counts as abandoned.
    """
    return SpoolSink(
        settings.spool_dir.absolute(),
        session_factory,
        settings.min_free_mb,
        abandoned_after_s=settings.network_timeout_seconds + DIMSE_TIMEOUT_S,
        resent_policy=settings.resent_instance_policy,
    )
