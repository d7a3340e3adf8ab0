"""``triage-node model ...`` and ``triage-node dataset ...``: the site's models, from the CLI.

Admin actions on the node's database, each audited as the operating-system user
who ran it (``cli:<user>``)::

    triage-node model add FILE.onnx [--shadow] [--name NAME]
    triage-node model list
    triage-node model compare [--since DATE] [--until DATE] [--json]
    triage-node model promote NAME [--force --reason TEXT]
    triage-node model rollback
    triage-node dataset export --out DIR [--since DATE] [--until DATE]

A refused action prints why on stderr, exits 1 and changes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, date, datetime, time
from typing import Any

from worklist.audit import Actor
from worklist.core.settings import Settings

__all__ = ["add_model_commands", "cli_actor", "parse_day", "run_model_command"]


def parse_day(text: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO date-time (UTC when naive).

    Parameters
    ----------
    text : str

    Returns
    -------
    datetime
        Timezone-aware.
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
    if isinstance(value, date) and not isinstance(value, datetime):  # pragma: no cover
        value = datetime.combine(value, time())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cli_actor() -> Actor:
    """The audit actor of a command-line admin action: the operating-system user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return Actor(
        user_id=None, username=f"cli:{user}"[:64], role="admin", auth_method="cli", client_ip=None
    )


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``model`` and ``dataset`` subcommands to a parser's subparsers.

    Parameters
    ----------
    sub : argparse._SubParsersAction
    """
    model = sub.add_parser("model", help="the model registry: champion and shadow models")
    msub = model.add_subparsers(dest="model_command", required=True)
    add = msub.add_parser("add", help="register an ONNX model with its card (checked first)")
    add.add_argument("file", help="the .onnx file with its model card")
    add.add_argument(
        "--shadow",
        action="store_true",
        help="score every new study in shadow (without it the model is registered idle)",
    )
    add.add_argument("--name", default=None, help="registry name (default: the card's name)")
    lst = msub.add_parser("list", help="list the registered models, champion first")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    promote = msub.add_parser("promote", help="make a registered model the champion")
    promote.add_argument("name", help="the registry name of the model")
    promote.add_argument(
        "--force", action="store_true", help="override the safety rule (needs --reason)"
    )
    promote.add_argument("--reason", default=None, help="why (audited; needed with --force)")
    promote.add_argument(
        "--since",
        type=parse_day,
        default=None,
        help="judge the safety rule on studies received since this date (YYYY-MM-DD)",
    )
    msub.add_parser("rollback", help="undo the latest promotion")
    compare = msub.add_parser("compare", help="champion vs challengers on labelled studies")
    compare.add_argument(
        "--since", type=parse_day, default=None, help="studies received since (YYYY-MM-DD)"
    )
    compare.add_argument(
        "--until", type=parse_day, default=None, help="studies received before (YYYY-MM-DD)"
    )
    compare.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    compare.add_argument("--json", action="store_true", help="print the full comparison as JSON")

    dataset = sub.add_parser("dataset", help="labelled studies as a training dataset")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    export = dsub.add_parser("export", help="write labels.csv and images of labelled studies")
    export.add_argument("--out", required=True, help="a new or empty directory")
    export.add_argument(
        "--since", type=parse_day, default=None, help="studies received since (YYYY-MM-DD)"
    )
    export.add_argument(
        "--until", type=parse_day, default=None, help="studies received before (YYYY-MM-DD)"
    )


def _print_models(session: Any, as_json: bool) -> None:
    from worklist.model_registry import list_models

    rows = list_models(session)
    if as_json:
        out = [
            {
                "name": m.name,
                "version": m.version,
                "role": m.role,
                "sha256": m.sha256,
                "path": m.path,
                "added_at": m.added_at.isoformat(),
                "promoted_at": m.promoted_at.isoformat() if m.promoted_at else None,
            }
            for m in rows
        ]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    sys.stdout.write("role\tname\tversion\tsha256\tadded\n")
    for m in rows:
        sys.stdout.write(
            f"{m.role}\t{m.name}\t{m.version}\t{m.sha256[:12]}\t{m.added_at:%Y-%m-%d %H:%M}\n"
        )


def run_model_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``model`` or ``dataset`` subcommand.

    Parameters
    ----------
    args : argparse.Namespace
    settings : Settings

    Returns
    -------
    int
        0 done, 1 refused (the reason on stderr).
    """
    from models.runtime import resolve_model_path
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.model_registry import (
        PromotionRefused,
        RegistryError,
        add_model,
        ensure_champion,
        prepare_model,
        promote,
        record_refusal,
        rollback,
    )

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    database = open_database(settings)
    actor = cli_actor()
    models_dir = settings.data_dir / "models"
    try:
        ensure_champion(
            database.session_factory,
            path=resolve_model_path(settings.model_path),
            models_dir=models_dir,
            operating_point=settings.operating_point,
        )
        if args.command == "dataset":
            from worklist.dataset_export import ExportError, export_dataset

            try:
                summary = export_dataset(
                    database.session_factory,
                    out_dir=args.out,
                    settings=settings,
                    actor=actor,
                    since=args.since,
                    until=args.until,
                )
            except ExportError as exc:
                sys.stderr.write(f"triage-node: {exc}\n")
                return 1
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            return 0
        command = args.model_command
        if command == "list":
            with database.session_factory() as session:
                _print_models(session, args.json)
            return 0
        if command == "compare":
            from worklist.model_compare import compare_inputs, comparison_inputs, format_comparison

            # Read, then compute the bootstrap with no transaction (and no SQLite lock) held.
            with database.session_factory() as session:
                inputs = comparison_inputs(session, since=args.since, until=args.until)
            report = compare_inputs(
                inputs, operating_point=settings.operating_point, n_boot=args.n_boot
            )
            text = json.dumps(report, indent=2) if args.json else format_comparison(report)
            sys.stdout.write(text + "\n")
            return 0
        try:
            # Checking and copying a model takes time: before the transaction, not in it.
            prepared = (
                prepare_model(
                    args.file, models_dir=models_dir, operating_point=settings.operating_point
                )
                if command == "add"
                else None
            )
            with database.session_factory.begin() as session:
                if command == "add":
                    entry = add_model(
                        session,
                        prepared=prepared,
                        actor=actor,
                        shadow=args.shadow,
                        name=args.name,
                    )
                    sys.stdout.write(
                        f"registered {entry.name} ({entry.sha256[:12]}) as {entry.role}\n"
                    )
                elif command == "promote":
                    from worklist.model_safety import safety_rule

                    promote(
                        session,
                        name=args.name,
                        actor=actor,
                        safety=safety_rule(settings.operating_point, since=args.since),
                        force=args.force,
                        reason=args.reason,
                    )
                    forced = " (forced)" if args.force else ""
                    sys.stdout.write(f"{args.name} is the champion{forced}\n")
                else:
                    undone = rollback(session, actor=actor)
                    sys.stdout.write(f"rolled back promotion {undone.id}\n")
        except RegistryError as exc:
            if isinstance(exc, PromotionRefused):
                with database.session_factory.begin() as session:
                    record_refusal(session, actor=actor, name=args.name, error=exc)
            sys.stderr.write(f"triage-node: {exc}\n")
            return 1
    finally:
        database.dispose()
    return 0
