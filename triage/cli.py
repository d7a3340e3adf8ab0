"""``triage-node``: the node's command line.

Subcommands
-----------
serve       everything in one process: SCP, stability watcher, worker, HTTP server
scp         the DICOM SCP and the stability watcher
worker      a Celery worker (``--queues inference,delivery``)
api         the HTTP server (API, web page, metrics)
db upgrade  apply the database migrations
config      print the effective settings (secrets hidden)
user        local accounts: add, passwd, disable, list (worklist.admin_cli)
token       bearer tokens for systems (RIS): add, revoke
model       the model registry: add, list, compare, promote, rollback (worklist.model_cli)
dataset     export labelled studies as a training dataset

Settings come from ``TRIAGE_*`` environment variables and ``--config FILE`` (TOML).
Heavy imports happen inside the subcommands, so ``scp`` never imports worker code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from worklist.core.logs import configure_logging
from worklist.core.settings import Settings, SettingsError, load_settings

log = logging.getLogger("triage.cli")


def _stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %s, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def cmd_db_upgrade(settings: Settings) -> int:
    """Apply the migrations to the configured database."""
    from worklist.core.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    log.info("database is at the newest schema")
    return 0


def cmd_scp(settings: Settings) -> int:
    """Run the DICOM SCP and the stability watcher until stopped."""
    from dicom_scp.server import run_scp

    run_scp(settings)
    return 0


def cmd_worker(settings: Settings, queues: list[str], concurrency: int) -> int:
    """Run a Celery worker on ``queues`` until stopped."""
    from triage.worker import run_worker

    run_worker(settings, queues=queues, concurrency=concurrency)
    return 0


def cmd_api(settings: Settings) -> int:
    """Run the HTTP server until stopped."""
    import uvicorn

    from worklist.core.db import open_database
    from worklist.http.app import create_app

    app = create_app(settings, open_database(settings).session_factory)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning")
    return 0


def cmd_serve(settings: Settings) -> int:
    """Run the whole node in one process (the embedded default)."""
    import uvicorn

    from dicom_scp.server import scp_process_count, start_node_scp
    from triage.worker import start_embedded_worker
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.http.app import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    database = open_database(settings)
    session_factory = database.session_factory
    stop = _stop_event()

    worker = start_embedded_worker(settings)
    try:
        scp = start_node_scp(settings, session_factory, processes=scp_process_count(settings))
    except BaseException:
        worker.stop()
        database.dispose()
        raise
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, session_factory),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
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
    try:
        stop.wait()
    finally:
        log.info("shutting down")
        scp.stop()
        server.should_exit = True
        http.join(timeout=10)
        worker.stop()
        database.dispose()
    return 0


def cmd_config(settings: Settings) -> int:
    """Print the effective settings as JSON."""
    print(settings.model_dump_json(indent=2))  # noqa: T201 - CLI output
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``triage-node``.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="triage-node", description="Chest X-ray triage DICOM node."
    )
    parser.add_argument("--config", help="TOML settings file (default: $TRIAGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run everything in one process (embedded default)")
    sub.add_parser("scp", help="run the DICOM SCP and the stability watcher")
    worker = sub.add_parser("worker", help="run a triage worker")
    worker.add_argument(
        "--queues", default="inference,delivery", help="comma-separated queues to consume"
    )
    worker.add_argument("--concurrency", type=int, default=1, help="worker processes")
    sub.add_parser("api", help="run the HTTP server")
    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations")
    sub.add_parser("config", help="print the effective settings")
    # Accounts (worklist.admin_cli): user add|passwd|disable|list, token add|revoke
    from worklist.admin_cli import add_account_commands

    add_account_commands(sub)
    # Models and datasets (worklist.model_cli): model add|list|compare|promote|rollback, dataset export
    from worklist.model_cli import add_model_commands

    add_model_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``triage-node``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Process exit code.
    """
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"triage-node: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_level)
    if args.command in ("serve", "scp"):
        from dicom_scp.ae import PortInUseError

        try:
            return cmd_serve(settings) if args.command == "serve" else cmd_scp(settings)
        except PortInUseError as exc:
            print(f"triage-node: {exc}", file=sys.stderr)  # noqa: T201
            return 2
    if args.command == "worker":
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        return cmd_worker(settings, queues, args.concurrency)
    if args.command == "api":
        return cmd_api(settings)
    if args.command == "db":
        return cmd_db_upgrade(settings)
    if args.command == "config":
        return cmd_config(settings)
    if args.command in ("user", "token"):
        from worklist.admin_cli import run_account_command

        return run_account_command(args, settings)
    if args.command in ("model", "dataset"):
        from worklist.model_cli import run_model_command

        return run_model_command(args, settings)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
