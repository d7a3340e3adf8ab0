"""Container health check of cxr-triage-node.

Run by the image's ``HEALTHCHECK`` and by the Kubernetes exec probes::

    python /opt/triage/healthcheck.py                 # role read from PID 1
    python /opt/triage/healthcheck.py --role http     # GET /healthz on the HTTP port
    python /opt/triage/healthcheck.py --role dicom    # TCP connect to the DICOM port
    python /opt/triage/healthcheck.py --role worker   # reach the Celery broker

Only ``serve`` and ``api`` run an HTTP server, so one HTTP check cannot serve every
container of the one image: with ``--role auto`` (the default) the role follows the
subcommand that PID 1 runs (``triage-node scp`` -> ``dicom``). Ports and the broker
URL come from the node's own settings (``TRIAGE_*`` variables and the config file),
so the check asks where the process listens. Exit status 0 is healthy, 1 unhealthy.

The DICOM check only opens a TCP connection: an association could be refused by the
calling-AE or peer allow-lists or need TLS, and the listener is alive either way.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROLES = ("auto", "http", "dicom", "worker")
_SUBCOMMAND_ROLES = {"serve": "http", "api": "http", "scp": "dicom", "worker": "worker"}
_LAUNCHERS = ("triage-node", "triage-entrypoint", "docker-entrypoint.sh")


def parse_command(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """Find the ``triage-node`` subcommand and ``--config`` value in a command line.

    Parameters
    ----------
    argv : sequence of str
        A process's command line, for example ``["/opt/triage/bin/python",
        "/opt/triage/bin/triage-node", "--config", "/etc/triage.toml", "scp"]``.

    Returns
    -------
    tuple of (str or None, str or None)
        The subcommand and the config file, each None when absent.
    """
    start = None
    for index, arg in enumerate(argv):
        if Path(arg).name in _LAUNCHERS:
            start = index + 1
    if start is None:
        return None, None
    config: str | None = None
    rest = list(argv[start:])
    while rest:
        arg = rest.pop(0)
        if arg == "--config" and rest:
            config = rest.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif not arg.startswith("-"):
            return arg, config
    return None, config


def role_for(subcommand: str | None) -> str:
    """Map a ``triage-node`` subcommand to the check that fits it.

    Parameters
    ----------
    subcommand : str or None
        ``serve``, ``api``, ``scp`` or ``worker``; anything else, or None, gets the
        HTTP check (the image's default command is ``serve``).

    Returns
    -------
    str
        One of ``http``, ``dicom``, ``worker``.
    """
    return _SUBCOMMAND_ROLES.get(subcommand or "", "http")


def pid1_command() -> list[str]:
    """Return the command line of PID 1, or an empty list when it cannot be read.

    Returns
    -------
    list of str
    """
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _local(host: str) -> str:
    """The address to dial for a listener bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def check_http(host: str, port: int, path: str = "/healthz", timeout: float = 4.0) -> str | None:
    """GET ``path`` and expect a 2xx answer.

    Parameters
    ----------
    host : str
        Address to dial.
    port : int
        HTTP port.
    path : str
        Path to ask.
    timeout : float
        Seconds.

    Returns
    -------
    str or None
        None when healthy, otherwise what went wrong.
    """
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            if 200 <= response.status < 300:
                return None
            return f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def check_tcp(host: str, port: int, timeout: float = 4.0) -> str | None:
    """Open and close a TCP connection.

    Parameters
    ----------
    host : str
        Address to dial.
    port : int
        TCP port.
    timeout : float
        Seconds.

    Returns
    -------
    str or None
        None when the port accepts connections, otherwise what went wrong.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


def check_broker(url: str, timeout: float = 4.0) -> str | None:
    """Connect to the Celery broker once.

    Parameters
    ----------
    url : str
        Broker URL (``redis://...`` or the embedded ``sqla+sqlite://...``).
    timeout : float
        Seconds.

    Returns
    -------
    str or None
        None when the broker answers, otherwise what went wrong.
    """
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy; reported
        return f"broker: {type(exc).__name__}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one health check.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when healthy, 1 when not.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=ROLES, default="auto")
    parser.add_argument("--path", default="/healthz", help="HTTP path for --role http")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds")
    args = parser.parse_args(argv)

    subcommand, config = parse_command(pid1_command())
    role = role_for(subcommand) if args.role == "auto" else args.role

    from worklist.core.settings import SettingsError, load_settings

    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)  # noqa: T201 - check output
        return 1
    if role == "http":
        problem = check_http(
            _local(settings.http_host), settings.http_port, args.path, args.timeout
        )
    elif role == "dicom":
        problem = check_tcp(_local(settings.dicom_host), settings.dicom_port, args.timeout)
    else:
        problem = check_broker(settings.effective_broker_url, args.timeout)
    if problem:
        print(f"unhealthy ({role}): {problem}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
