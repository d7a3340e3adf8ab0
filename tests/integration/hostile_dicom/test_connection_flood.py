"""One peer address cannot hold the DICOM port with a flood of idle connections.

Connections that are not associated take no association slot, but each costs two
threads until the ACSE timeout closes it. An address holding its share of
``max_connections_per_peer`` open connections gets new ones closed at accept,
while other addresses are served, and its slots come back once its connections
close. The refusals are logged once per process and minute, not once per
connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import wait_until
from tests.integration.deploy.helpers import echo
from tests.integration.hostile_dicom.helpers import connect, wait_closed

PER_PEER = 8
FLOOD = 30


def _echo_from(address: str, port: int) -> bool:
    ae = AE(ae_title="OTHERPEER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE", bind_address=(address, 0))
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == 0x0000)
    finally:
        if assoc.is_established:
            assoc.release()


def test_idle_connection_flood_from_one_address(scp_node: Callable[..., Any]) -> None:
    # one SCP process, so that the whole share is in one place (with two, each keeps half)
    node = scp_node(max_connections_per_peer=PER_PEER, acse_timeout_seconds=30, scp_processes=1)
    flood: list[socket.socket] = [connect(node.port) for _ in range(FLOOD)]
    try:
        closed = wait_closed(flood, timeout=3.0)
        # the node keeps at most its per-peer share open and closes the rest at once,
        # long before the 30 s ACSE timeout would have
        # a connection accepted in the instant before its thread starts may slip past
        # the count (at most a couple in a burst): the cap is soft by that much
        assert FLOOD - PER_PEER - 2 <= len(closed) <= FLOOD - PER_PEER, (
            len(closed),
            node.log()[-2000:],
        )
        assert max(closed.values()) < 3.0

        # another address is served meanwhile
        assert _echo_from("127.0.0.2", node.port), node.log()[-2000:]
        # and this one is refused while it holds its share
        assert not echo(node.port)
    finally:
        for sock in flood:
            sock.close()

    # its slots come back once its connections are closed
    wait_until(lambda: echo(node.port), timeout=10, what="127.0.0.1 served again")
    refusals = [
        line for line in node.log().splitlines() if "refusing connections from 127.0.0.1" in line
    ]
    assert len(refusals) == 1, refusals  # once a minute, not once a connection
    assert "TRIAGE_MAX_CONNECTIONS_PER_PEER" in refusals[0]


def test_many_connections_within_the_share_are_served(scp_node: Callable[..., Any]) -> None:
    """Below the cap nothing changes: 6 idle connections stay open and an echo works."""
    node = scp_node(max_connections_per_peer=64, acse_timeout_seconds=30)
    idle = [connect(node.port) for _ in range(6)]
    try:
        time.sleep(0.5)
        assert wait_closed(idle, timeout=1.0) == {}
        assert echo(node.port)
    finally:
        for sock in idle:
            sock.close()
