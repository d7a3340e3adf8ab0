"""Issue 13 point 2: a PDU's declared length is bounded before its body is read.

Clients declare a 0x7FFFFFF0-byte A-ASSOCIATE-RQ (and, once associated, P-DATA-TF)
and stream zeros; every node process's resident size is sampled meanwhile and must
grow by less than 64 MB; the node aborts the peer and closes the connection.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from tests.integration.hostile_dicom.helpers import associate, connect, pdu_header
from tests.support.procfs import rss_bytes

DECLARED = 0x7FFFFFF0
STREAM_BYTES = 256 * 1024 * 1024
"""Zeros each client sends at most (the old reader buffered all of them)."""
BUDGET = 64 * 1024 * 1024


def _stream_zeros(sock: socket.socket, result: dict[str, Any]) -> None:
    chunk = bytes(1 << 20)
    sent = 0
    start = time.monotonic()
    sock.settimeout(10)
    try:
        while sent < STREAM_BYTES:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError as exc:
        result["stopped"] = type(exc).__name__
    result["sent"] = sent
    result["seconds"] = time.monotonic() - start


def test_huge_declared_pdus_cost_under_64mb_and_are_aborted(scp_node: Any) -> None:
    node = scp_node()
    pids = node.pids()
    baseline = {pid: rss_bytes(pid) for pid in pids}
    # Two associated clients first, then two that never associate.
    clients = [associate(node.port) for _ in range(2)] + [connect(node.port) for _ in range(2)]
    for index, sock in enumerate(clients):
        pdu_type = 0x04 if index < 2 else 0x01  # a P-DATA-TF, an A-ASSOCIATE-RQ of 2 GB
        sock.sendall(pdu_header(pdu_type, DECLARED))
    results: list[dict[str, Any]] = [{} for _ in clients]
    threads = [
        threading.Thread(target=_stream_zeros, args=(sock, result), daemon=True)
        for sock, result in zip(clients, results, strict=True)
    ]
    peak = dict(baseline)
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            for pid in pids:
                peak[pid] = max(peak[pid], rss_bytes(pid))
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for sock in clients:
            sock.close()
    growth = {pid: peak[pid] - baseline[pid] for pid in pids}
    print(
        "RSS growth per node process (MB):",
        {pid: round(g / 2**20, 1) for pid, g in growth.items()},
        "sent per client (MB):",
        [round(r.get("sent", 0) / 2**20) for r in results],
    )
    assert max(growth.values()) < BUDGET, growth
    # The node closed every connection long before the stream ended.
    assert all("stopped" in r for r in results), results
    assert node.log().count("-byte limit: aborting") >= 4, node.log()[-3000:]
    assert node.proc.running()
