"""Crafted DICOM Upper Layer bytes, attacker sockets, and the node's processes' memory.

Everything is sent to 127.0.0.1 only.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import struct
import time

VERIFICATION = "1.2.840.10008.1.1"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(called: str = "TRIAGE", calling: str = "ATTACKER") -> bytes:
    """A whole, valid A-ASSOCIATE-RQ PDU proposing Verification and CR Storage."""
    contexts = b""
    for context_id, abstract in ((1, VERIFICATION), (3, CR_STORAGE)):
        body = bytes([context_id, 0, 0, 0]) + _item(0x30, abstract.encode())
        body += _item(0x40, IMPLICIT_LE.encode()) + _item(0x40, EXPLICIT_LE.encode())
        contexts += _item(0x20, body)
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)))
    variable = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT.encode())
        + contexts
        + user
    )
    return struct.pack(">BBL", 0x01, 0, len(variable)) + variable


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6-byte header of a PDU declaring ``length`` bytes of body."""
    return struct.pack(">BBL", pdu_type, 0, length)


def connect(
    port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 10.0
) -> socket.socket:
    """A TCP (or TLS, handshake done) connection to 127.0.0.1:``port``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def associate(port: int) -> socket.socket:
    """Connect, send :func:`associate_rq`, and return the socket once accepted."""
    sock = connect(port)
    sock.sendall(associate_rq())
    header = recv_exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBL", header)
    recv_exactly(sock, length)
    assert pdu_type == 0x02, f"association not accepted (PDU type 0x{pdu_type:02X})"
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes, or fail when the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def wait_closed(socks: list[socket.socket], timeout: float) -> dict[int, float]:
    """Seconds until the node closed each socket (EOF or reset), by index; sockets
    still open after ``timeout`` are missing from the result. Whatever the node sends
    before closing (an A-ABORT) is read and dropped."""
    start = time.monotonic()
    closed: dict[int, float] = {}
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    try:
        while len(closed) < len(socks):
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                break
            for key, _ in selector.select(min(left, 0.5)):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed[key.data] = time.monotonic() - start
                    selector.unregister(key.fileobj)
    finally:
        selector.close()
    return closed
