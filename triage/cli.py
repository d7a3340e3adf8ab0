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

Settings come from ``TRIAGE_*`` environment variables and ``--config FILE`` (TOML), read
once by :func:`main`, which calls the subcommand's ``cmd_*(args, settings)`` (bound to
its parser with ``set_defaults(run=...)``). Heavy imports happen inside the
subcommands, so ``scp`` never imports worker code.
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


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    """Apply the migrations to the configured database."""
    from worklist.core.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    log.info("database is at the newest schema")
    return 0


def cmd_scp(args: argparse.Namespace, settings: Settings) -> int:
    """Run the DICOM SCP and the stability watcher until stopped."""
    from dicom_scp.server import run_scp

    run_scp(settings)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run a Celery worker on ``--queues`` (comma-separated) until stopped."""
    from triage.worker import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    run_worker(settings, queues=queues, concurrency=args.concurrency)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP server until stopped."""
    import uvicorn

    from worklist.core.db import open_database
    from worklist.http.app import create_app

    app = create_app(settings, open_database(settings).session_factory)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
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


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
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
    serve = sub.add_parser("serve", help="run everything in one process (embedded default)")
    serve.set_defaults(run=cmd_serve)
    scp = sub.add_parser("scp", help="run the DICOM SCP and the stability watcher")
    scp.set_defaults(run=cmd_scp)
    worker = sub.add_parser("worker", help="run a triage worker")
    worker.add_argument(
        "--queues", default="inference,delivery", help="comma-separated queues to consume"
    )
    worker.add_argument("--concurrency", type=int, default=1, help="worker processes")
    worker.set_defaults(run=cmd_worker)
    api = sub.add_parser("api", help="run the HTTP server")
    api.set_defaults(run=cmd_api)
    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations")
    upgrade.set_defaults(run=cmd_db_upgrade)
    config = sub.add_parser("config", help="print the effective settings")
    config.set_defaults(run=cmd_config)
    # Accounts (worklist.admin_cli): user add|passwd|disable|list, token add|revoke
    from worklist.admin_cli import add_account_commands, run_account_command

    add_account_commands(sub)
    for name in ("user", "token"):
        sub.choices[name].set_defaults(run=run_account_command)
    # Models and datasets (worklist.model_cli): model add|list|compare|promote|rollback,
    # dataset export
    from worklist.model_cli import add_model_commands, run_model_command

    add_model_commands(sub)
    for name in ("model", "dataset"):
        sub.choices[name].set_defaults(run=run_model_command)
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
    if args.command not in ("serve", "scp"):
        return int(args.run(args, settings))
    from dicom_scp.ae import PortInUseError

    try:
        return int(args.run(args, settings))
    except PortInUseError as exc:
        print(f"triage-node: {exc}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
