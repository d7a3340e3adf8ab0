"""The cheapest storage SCP pynetdicom can be: the ingest benchmark's floor reference.

It accepts every storage SOP class with every transfer syntax the node accepts,
answers every C-STORE with Success and keeps nothing: no file, no database, no
fsync, no parsing of the dataset. Whatever it costs is pynetdicom's own protocol
path (PDU reads, state machine, DIMSE reassembly, the response), so the node,
which is built on pynetdicom, can never be faster than this on the same machine.

``bench/ingest.py --receivers ...,pynetdicom`` runs it::

    python bench/pynetdicom_floor_scp.py PORT COUNT_FILE [--chunked] [--processes N]

``COUNT_FILE`` holds the number of C-STOREs answered so far, rewritten after each
one, so the benchmark can check the count like it does for the other receivers
``--processes N`` (default 1) serves from N processes accepting from one listening
socket, as the node's do; process ``i`` counts in ``COUNT_FILE.<i>``.
``--chunked`` receives each dataset into a temporary file as the node does
(pynetdicom's ``STORE_RECV_CHUNKED_DATASET``) and deletes it unread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt

from dicom_scp.ae import MAX_PDU_BYTES, SharedSocketAssociationServer, open_listening_socket
from dicom_scp.contexts import supported_contexts


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("count_file", type=Path)
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    listen_socket = open_listening_socket("127.0.0.1", args.port)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=serve,
            args=(listen_socket, args.count_file.with_name(f"{args.count_file.name}.{i}")),
            kwargs={"chunked": args.chunked},
            daemon=True,
        )
        for i in range(max(1, args.processes))
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()


def serve(listen_socket: socket.socket, count_file: Path, *, chunked: bool) -> None:
    """One receiving process."""
    if chunked:
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(count_file.parent)
    lock = threading.Lock()
    answered = [0]

    def on_store(event: Any) -> int:
        with lock:
            answered[0] += 1
            tmp = count_file.with_name(count_file.name + ".tmp")
            tmp.write_text(str(answered[0]))
            os.replace(tmp, count_file)
        return 0x0000

    ae = AE(ae_title="FLOOR")
    ae.supported_contexts = supported_contexts()
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = 64
    server = ae.make_server(
        listen_socket.getsockname(),
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        server_class=SharedSocketAssociationServer,
        listen_socket=listen_socket,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
