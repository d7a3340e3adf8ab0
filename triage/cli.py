"""``triage-node``: the node's command line.

Subcommands
-----------
serve       everything in one process: SCP, stability watcher, worker, HTTP server
scp         the DICOM SCP and the stability watcher
worker      a Celery worker (``--queues inference,delivery``)
api         the HTTP server (API, web page, metrics)
db upgrade  apply the database migrations
config      print every setting: variable, effective value, meaning (secrets masked)
retriage    triage a study again (new revision) after a model change, audited
resend      re-queue a study's failed SR (and heatmap SC) deliveries, audited
study       study release UID: triage a study held for a patient mismatch
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

from models.cli import HelpFormatter
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
    if "inference" in queues:
        from triage.startup import model_line

        log.info("%s", model_line(settings))
    run_worker(settings, queues=queues, concurrency=args.concurrency, verbose=args.verbose)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP server until stopped."""
    import uvicorn

    from triage.embedded import http_server_config
    from worklist.core.db import open_database
    from worklist.http.app import create_app

    app = create_app(settings, open_database(settings).session_factory)
    uvicorn.Server(http_server_config(settings, app)).run()
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the whole node in one process tree (the embedded default)."""
    from triage.embedded import run_embedded_node

    run_embedded_node(settings, stop=_stop_event(), verbose=args.verbose)
    return 0


def cmd_study_release(args: argparse.Namespace, settings: Settings) -> int:
    """Release a study held for a patient mismatch (it is triaged again once stable)."""
    import getpass

    from worklist.audit import Action, Actor, record
    from worklist.core.db import open_database
    from worklist.ingest import release_study

    database = open_database(settings)
    try:
        with database.session_factory() as session:
            if not release_study(session, args.study_uid):
                print(f"triage-node: study {args.study_uid} is not held", file=sys.stderr)  # noqa: T201
                return 1
            actor = Actor(None, f"cli:{getpass.getuser()}", "admin", "cli", None)
            record(
                session,
                actor=actor,
                action=Action.RELEASE_HOLD,
                study_instance_uid=args.study_uid,
            )
            session.commit()
    finally:
        database.dispose()
    log.info("study %s released: it is triaged again once stable", args.study_uid)
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print every setting: effective value (secrets masked), variable, meaning."""
    from triage.config_report import config_rows, format_config

    print(format_config(config_rows(settings), as_json=args.json))  # noqa: T201 - CLI output
    return 0


def cmd_retriage(args: argparse.Namespace, settings: Settings) -> int:
    """Queue a triaged study for a new triage revision (audited), e.g. after a model change."""
    import getpass

    from worklist.audit import Actor
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.retriage import RetriageError, request_retriage

    upgrade(settings.effective_database_url)
    database = open_database(settings)
    actor = Actor(None, f"cli:{getpass.getuser()}", "admin", "cli", None)
    try:
        with database.session_factory() as session:
            try:
                done = request_retriage(
                    session, study_instance_uid=args.study_uid, actor=actor, reason=args.reason
                )
            except RetriageError as exc:
                session.rollback()
                print(f"triage-node retriage: {exc}", file=sys.stderr)  # noqa: T201
                return 1
            session.commit()
    finally:
        database.dispose()
    print(  # noqa: T201 - CLI output
        f"study {done.study_instance_uid} queued as revision {done.revision} (was"
        f" {done.previous_revision}); the running node triages it with its current model"
        " and its SR supersedes the earlier one"
    )
    return 0


def cmd_resend(args: argparse.Namespace, settings: Settings) -> int:
    """Re-queue the failed SR and heatmap SC deliveries of a study (audited); the delivery
    worker's sweep sends them. Exit 1 when there is none."""
    import getpass

    from worklist import audit
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.outbox import KIND_NAMES, requeue_failed

    study_uid, destination = args.study_uid.strip(), args.destination
    upgrade(settings.effective_database_url)
    database = open_database(settings)
    try:
        with database.session_factory.begin() as session:
            rows = requeue_failed(session, study_instance_uid=study_uid, destination_ae=destination)
            if rows:
                audit.record(
                    session,
                    actor=audit.Actor(None, f"cli:{getpass.getuser()}", "admin", "cli", None),
                    action=audit.Action.RESEND_SR,
                    study_instance_uid=study_uid,
                    detail={"deliveries": [r.id for r in rows], "destination": destination},
                )
            done = [
                (r.id, KIND_NAMES.get(r.kind, r.kind), r.sop_instance_uid, r.destination)
                for r in rows
            ]
    finally:
        database.dispose()
    if not done:
        print(  # noqa: T201 - CLI output
            f"triage-node: no failed SR or heatmap delivery for study {study_uid}"
            + (f" to {destination}" if destination else ""),
            file=sys.stderr,
        )
        return 1
    for delivery_id, what, sop_uid, where in done:
        print(f"re-queued delivery {delivery_id} of {what} {sop_uid} to {where}")  # noqa: T201
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``triage-node``.

    Returns
    -------
    argparse.ArgumentParser
    """
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="triage-node",
        description="Chest X-ray triage DICOM node: receives radiographs by C-STORE,"
        " scores them with an ONNX model, sends a DICOM SR back and keeps a priority"
        " worklist. Settings come from TRIAGE_* variables and --config (see"
        " 'triage-node config').",
        formatter_class=fmt,
    )
    parser.add_argument(
        "--config", default=None, help="TOML settings file (default: $TRIAGE_CONFIG, if set)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show the libraries' start-up output (Celery banners and warnings,"
        " Alembic plugin lines)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run everything in one process (embedded default)",
        description="Run the DICOM SCP, the stability watcher, an inference and a delivery"
        " worker and the HTTP server in one process, with SQLite and an embedded broker"
        " under TRIAGE_DATA_DIR unless TRIAGE_DATABASE_URL/TRIAGE_BROKER_URL say otherwise."
        " Applies the database migrations first.",
        formatter_class=fmt,
    )
    serve.set_defaults(run=cmd_serve)
    scp = sub.add_parser(
        "scp",
        help="run the DICOM SCP and the stability watcher",
        description="Run the DICOM SCP (C-ECHO, C-STORE into the spool) and the watcher"
        " that hands stable studies to the inference queue. Scaled-out layout.",
        formatter_class=fmt,
    )
    scp.set_defaults(run=cmd_scp)
    worker = sub.add_parser(
        "worker",
        help="run a triage worker (inference and/or SR delivery)",
        description="Run a Celery worker. 'inference' triages studies (one per GPU);"
        " 'delivery' sends SRs to the destinations and runs the outbox sweep.",
        formatter_class=fmt,
    )
    worker.add_argument(
        "--queues",
        default="inference,delivery",
        help="comma-separated queues to consume; choices: inference, delivery",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="pool size: processes for inference, threads for delivery",
    )
    worker.set_defaults(run=cmd_worker)
    api = sub.add_parser(
        "api",
        help="run the HTTP server (API, web page, metrics)",
        description="Run the HTTP server: JSON API under /api, the radiologists' web page,"
        " /healthz, /readyz and /metrics, on TRIAGE_HTTP_HOST:TRIAGE_HTTP_PORT.",
        formatter_class=fmt,
    )
    api.set_defaults(run=cmd_api)
    db = sub.add_parser(
        "db",
        help="database commands",
        description="Database commands (Alembic migrations of TRIAGE_DATABASE_URL).",
        formatter_class=fmt,
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_sub.add_parser(
        "upgrade",
        help="apply the migrations up to the newest schema",
        description="Apply the database migrations up to the newest schema (idempotent).",
        formatter_class=fmt,
    )
    upgrade.set_defaults(run=cmd_db_upgrade)
    config = sub.add_parser(
        "config",
        help="print every setting: its TRIAGE_ variable, effective value and meaning",
        description="Print every setting with the value the node will use (the SQLite"
        " file, the model file, the active ONNX Runtime providers), where it came from,"
        " its TRIAGE_ variable and what it means. Secrets are masked.",
        formatter_class=fmt,
    )
    config.add_argument("--json", action="store_true", help="JSON instead of a table")
    config.set_defaults(run=cmd_config)
    study = sub.add_parser("study", help="studies held for an administrator")
    study_sub = study.add_subparsers(dest="study_command", required=True)
    release = study_sub.add_parser(
        "release", help="triage a study held for a patient mismatch after checking it"
    )
    release.add_argument("study_uid", help="Study Instance UID")
    release.set_defaults(run=cmd_study_release)
    retriage = sub.add_parser(
        "retriage",
        help="triage a study again (a new revision), e.g. after a model change; audited",
        description="Queue a triaged study for a new triage revision. The running node"
        " (serve, or scp + workers) triages it with the model it runs now and sends an SR"
        " that supersedes the earlier one. Written to the audit log.",
        formatter_class=fmt,
    )
    retriage.add_argument("study_uid", help="Study Instance UID")
    retriage.add_argument("--reason", default=None, help="why, for the audit log (no patient data)")
    retriage.set_defaults(run=cmd_retriage)
    resend = sub.add_parser(
        "resend",
        help="re-queue a study's failed SR and heatmap SC deliveries (audited)",
        description="Put the deliveries of a study that failed (SR, and heatmap Secondary"
        " Captures with TRIAGE_HEATMAP_TO_PACS; the destination stayed down past"
        " TRIAGE_DELIVERY_RETRY_HOURS, or refused the object) back in the outbox,"
        " with a new retry horizon; the running delivery worker sends them. Written to"
        " the audit log.",
        formatter_class=fmt,
    )
    resend.add_argument("study_uid", help="Study Instance UID")
    resend.add_argument("--destination", default=None, help="only this destination's AE title")
    resend.set_defaults(run=cmd_resend)
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
    from worklist.simulate_cli import add_simulate_command

    add_simulate_command(sub)
    _describe_subcommands(parser)
    return parser


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give every sub-command a description (its help sentence when it has none) and
    show defaults in every help text."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}  # noqa: SLF001
        for name, child in action.choices.items():
            child.formatter_class = HelpFormatter
            if not child.description and helps.get(name):
                text = str(helps[name])
                child.description = text[0].upper() + text[1:] + "."
            _describe_subcommands(child)


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
    configure_logging(settings.log_level, verbose=args.verbose)
    if args.command not in ("serve", "scp"):
        return int(args.run(args, settings))
    from dicom_scp.ae import PortInUseError
    from worklist.core.processes import DataDirInUseError

    try:
        return int(args.run(args, settings))
    except (PortInUseError, DataDirInUseError) as exc:
        print(f"triage-node: {exc}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
