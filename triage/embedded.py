"""The embedded node: DICOM SCP, workers and HTTP server of one node, started and
stopped together (``triage-node serve``, the default install).

:func:`run_embedded_node` holds the data directory's lock for the node's lifetime
(the workers inherit it, so a second node on the same directory, or processes left
over from a killed one, cannot run beside it), migrates the database, starts the
workers, the SCP and the HTTP server, and stops them in the reverse order.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from worklist.core.settings import Settings

__all__ = ["http_server_config", "run_embedded_node", "trusted_proxies"]

log = logging.getLogger(__name__)


def trusted_proxies(settings: Settings) -> str:
    """The reverse proxies whose forwarded headers uvicorn may trust ("" for none).

    uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1 by default, so any local caller
    could choose the address the audit log records; the node trusts none unless
    ``forwarded_allow_ips`` names the reverse proxies (then ``proxy_headers`` is on).

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    str
        For uvicorn's ``forwarded_allow_ips``.
    """
    return ",".join(settings.forwarded_allow_ips)


def http_server_config(settings: Settings, app: Any) -> Any:
    """The uvicorn configuration of the node's HTTP server (``api`` and ``serve``).

    Parameters
    ----------
    settings : Settings
        ``http_host``, ``http_port`` and ``forwarded_allow_ips`` are used.
    app : fastapi.FastAPI
        From :func:`worklist.http.app.create_app`.

    Returns
    -------
    uvicorn.Config
    """
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        proxy_headers=bool(trusted_proxies(settings)),
        forwarded_allow_ips=trusted_proxies(settings),
    )


def run_embedded_node(settings: Settings, *, stop: threading.Event, verbose: bool = False) -> None:
    """Run the whole node until ``stop`` is set.

    Parameters
    ----------
    settings : Settings
    stop : threading.Event
        Set (by a signal handler) to stop the node.
    verbose : bool
        Celery's own banners and task lines in the workers' output.

    Raises
    ------
    worklist.core.processes.DataDirLocked
        When another node holds the data directory.
    """
    import uvicorn

    from dicom_scp.server import scp_process_count, start_node_scp
    from triage.startup import startup_lines
    from triage.worker import start_embedded_worker
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.core.processes import DataDirLock
    from worklist.http.app import create_app

    lock = DataDirLock(settings.data_dir).acquire()
    upgrade(settings.effective_database_url)
    database = open_database(settings)
    worker = start_embedded_worker(
        settings, verbose=verbose, inherit_fds=[] if lock.fd is None else [lock.fd]
    )
    for process in worker.processes.values():
        lock.record_child(process.pid)
    try:
        scp = start_node_scp(
            settings, database.session_factory, processes=scp_process_count(settings)
        )
    except BaseException:
        worker.stop()
        database.dispose()
        lock.release()
        raise
    server = uvicorn.Server(
        http_server_config(settings, create_app(settings, database.session_factory))
    )
    http = threading.Thread(target=server.run, name="http", daemon=True)
    http.start()
    log.info(
        "node %s serving: DICOM %s:%s, HTTP %s:%s, data in %s",
        settings.ae_title,
        settings.dicom_host,
        settings.dicom_port,
        settings.http_host,
        settings.http_port,
        settings.data_dir.resolve(),
    )
    for line in startup_lines(settings):
        log.info("%s", line)
    try:
        stop.wait()
    finally:
        log.info("shutting down")
        scp.stop()
        server.should_exit = True
        http.join(timeout=10)
        worker.stop()
        database.dispose()
        lock.release()
