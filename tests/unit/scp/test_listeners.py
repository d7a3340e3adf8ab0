"""How many SCP processes share the port, their association limits, the port check."""

from __future__ import annotations

import socket

import pytest

from dicom_scp.ae import PortInUseError, associations_per_process, build_ae, open_listening_socket
from dicom_scp.server import scp_process_count
from worklist.core.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("processes", "max_associations", "expected"),
    [(2, 16, 2), (4, 16, 4), (1, 16, 1), (4, 1, 1), (4, 3, 3)],
)
def test_never_more_processes_than_associations(
    processes: int, max_associations: int, expected: int
) -> None:
    settings = load_settings(scp_processes=processes, max_associations=max_associations)
    assert scp_process_count(settings) == expected


def test_default_is_two_processes() -> None:
    assert scp_process_count(load_settings()) == 2


@pytest.mark.parametrize(
    ("max_associations", "processes", "share"), [(16, 2, 8), (16, 3, 6), (5, 2, 3), (1, 1, 1)]
)
def test_each_process_gets_its_share_rounded_up(
    max_associations: int, processes: int, share: int
) -> None:
    settings = load_settings(max_associations=max_associations)
    assert associations_per_process(settings, processes) == share
    assert build_ae(settings, processes=processes).maximum_associations == share


def test_scp_processes_out_of_range_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="TRIAGE_SCP_PROCESSES"):
        load_settings(scp_processes=0)


def test_listening_socket_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port} is already in use"):
            open_listening_socket("127.0.0.1", port)
    open_listening_socket("127.0.0.1", port).close()  # closed: free again


def test_listening_socket_refuses_a_port_shared_with_so_reuseport() -> None:
    """A program that shares its port must not let the node join it by accident."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortInUseError):
            open_listening_socket("127.0.0.1", taken.getsockname()[1])


def test_listening_socket_is_non_blocking() -> None:
    """Every process waits on it; those that lose the race to accept() go on waiting."""
    sock = open_listening_socket("127.0.0.1", 0)
    try:
        assert sock.getblocking() is False
        with pytest.raises(BlockingIOError):
            sock.accept()
    finally:
        sock.close()
