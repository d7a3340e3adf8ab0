"""``triage-node user ...`` and ``triage-node token ...``: accounts from the command line.

There is no built-in account: the first admin is created with ``triage-node user add``.
Passwords are read from the terminal (twice) or, with ``--password-stdin``, from one
line of standard input; never from the command line, where other users could see it.
A token is printed once, on standard output, and only its hash is stored.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timedelta

from worklist.accounts import MIN_PASSWORD_LENGTH
from worklist.core.settings import Settings

__all__ = ["add_account_commands", "run_account_command"]


def add_account_commands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Add the ``user`` and ``token`` subcommands to a parser's subparsers.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        What ``parser.add_subparsers()`` returned.
    """
    user = sub.add_parser("user", help="manage local accounts: add, passwd, disable, list")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    rule = (
        f"Passwords: at least {MIN_PASSWORD_LENGTH} characters, at least 4 different ones,"
        " not containing the user name."
    )
    add = user_sub.add_parser(
        "add",
        help="create an account",
        description="Create an account. Radiologists and admins sign in to the web page"
        " with a password (asked twice on the terminal, or one line of stdin with"
        " --password-stdin). A service account (a system such as the RIS) has no"
        " password and cannot sign in: give it a token with 'triage-node token add'. " + rule,
    )
    add.add_argument("username", help="letters, digits and . _ - @ (at most 64)")
    add.add_argument(
        "--role",
        required=True,
        choices=["radiologist", "admin", "service"],
        help="radiologist: reads and acts on studies; admin: also the audit log and"
        " monitoring; service: token-only, read-only (choices: %(choices)s)",
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of stdin (for scripts); not for service",
    )
    passwd = user_sub.add_parser(
        "passwd",
        help="set a password (ends the user's sessions)",
        description="Set a person's password and end their web sessions. " + rule,
    )
    passwd.add_argument("username", help="the account")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from one line of stdin"
    )
    disable = user_sub.add_parser(
        "disable", help="disable an account (its sessions and tokens stop working)"
    )
    disable.add_argument("username", help="the account")
    user_sub.add_parser("list", help="list accounts: name, role, active or disabled")

    token = sub.add_parser("token", help="manage bearer tokens of systems (RIS): add, list, revoke")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    tadd = token_sub.add_parser(
        "add", help="create a token (printed once on stdout; only its hash is kept)"
    )
    tadd.add_argument("--user", required=True, help="the account the token acts as")
    tadd.add_argument("--name", required=True, help="what it is for, e.g. RIS")
    tadd.add_argument(
        "--expires-days", type=float, default=None, help="lifetime in days (default: none)"
    )
    token_sub.add_parser(
        "list", help="list tokens: id, user, name, created, expires, last used, state"
    )
    trevoke = token_sub.add_parser("revoke", help="revoke a token (see token list for ids)")
    trevoke.add_argument("token_id", type=int, help="the token's id (first column of token list)")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords differ")
    return first


def run_account_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``user`` or ``token`` subcommand.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments (``args.command`` is ``user`` or ``token``).
    settings : Settings

    Returns
    -------
    int
        Exit code: 0 done, 1 refused (the reason on stderr).
    """
    from sqlalchemy import select

    from worklist import accounts
    from worklist.core.clock import utcnow
    from worklist.core.db import open_database
    from worklist.core.migrate import upgrade
    from worklist.tables import User

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    database = open_database(settings)
    out = sys.stdout
    try:
        with database.session_factory() as session:
            try:
                if args.command == "user" and args.user_command == "add":
                    password = (
                        None if args.role == "service" else _read_password(args.password_stdin)
                    )
                    user = accounts.create_user(
                        session, username=args.username, password=password, role=args.role
                    )
                    out.write(f"created {user.role} {user.username}\n")
                    if password is None:
                        sys.stderr.write(
                            f"{user.username} is token-only (no password, no web sign-in):"
                            f" triage-node token add --user {user.username} --name NAME\n"
                        )
                elif args.command == "user" and args.user_command == "passwd":
                    password = _read_password(args.password_stdin)
                    accounts.set_password(session, username=args.username, password=password)
                    out.write(f"password of {args.username} changed\n")
                elif args.command == "user" and args.user_command == "disable":
                    user = accounts.get_user(session, username=args.username)
                    if user is None:
                        raise accounts.AccountError(f"no user {args.username!r}")
                    user.active = False
                    out.write(f"disabled {user.username}\n")
                elif args.command == "user":
                    for user in session.scalars(select(User).order_by(User.id)):
                        state = "active" if user.active else "disabled"
                        out.write(f"{user.username}\t{user.role}\t{state}\n")
                elif args.token_command == "add":
                    expires = (
                        utcnow() + timedelta(days=args.expires_days) if args.expires_days else None
                    )
                    token, row = accounts.create_token(
                        session, username=args.user, name=args.name, expires_at=expires
                    )
                    session.flush()
                    sys.stderr.write(f"token {row.id} for {args.user}; it is shown once:\n")
                    out.write(token + "\n")
                elif args.token_command == "list":
                    now = utcnow()
                    for row in accounts.list_tokens(session):
                        cells = [
                            str(row.id),
                            row.user.username,
                            row.name,
                            _when(row.created_at),
                            _when(row.expires_at),
                            _when(row.last_used_at),
                            accounts.token_state(row, now),
                        ]
                        out.write("\t".join(cells) + "\n")
                else:
                    accounts.revoke_token(session, token_id=args.token_id)
                    out.write(f"revoked token {args.token_id}\n")
                session.commit()
            except (accounts.AccountError, ValueError) as exc:
                session.rollback()
                sys.stderr.write(f"triage-node: {exc}\n")
                return 1
    finally:
        database.dispose()
    return 0
