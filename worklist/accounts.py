"""Accounts: the password and token services.

Passwords are Argon2id hashes, bearer tokens are stored as their SHA-256; the tables
(:class:`~worklist.tables.User`, :class:`~worklist.tables.ApiToken`...) and the roles
(:class:`~worklist.tables.Role`) are in :mod:`worklist.tables`. Service functions take
``session=`` first and flush but do not commit; the caller owns the transaction.
A ``service`` account (the RIS, a script) is token-only: it has no password and cannot
sign in to the web page; it acts with bearer tokens (``triage-node token add``).

There is no built-in account and no default password: accounts are created with
``triage-node user add`` (:func:`create_user`).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from worklist.core.clock import as_utc, utcnow
from worklist.tables import ApiToken, Role, User, WebSession

__all__ = [
    "AccountError",
    "MIN_PASSWORD_LENGTH",
    "check_password_policy",
    "create_token",
    "create_user",
    "get_user",
    "hash_password",
    "hash_token",
    "list_tokens",
    "revoke_token",
    "set_password",
    "token_state",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "tnt_"

# Argon2id with the library's defaults (RFC 9106 "second recommended" profile).
_HASHER = PasswordHasher()


class AccountError(ValueError):
    """An account or token cannot be created or changed as asked."""


# Passwords -------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """Hash a password with Argon2id.

    Parameters
    ----------
    password : str

    Returns
    -------
    str
        The encoded hash (algorithm, parameters, salt and digest).
    """
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Tell whether ``password`` matches ``password_hash``.

    When there is no hash (unknown user, or an account without a password) a dummy
    hash is checked anyway so that the answer takes the same time.

    Parameters
    ----------
    password_hash : str or None
    password : str

    Returns
    -------
    bool
    """
    if not password_hash:
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_dummy_hash(), password + "\x00")
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(_HASHER.hash(secrets.token_urlsafe(16)))
    return _DUMMY[0]


def check_password_policy(username: str, password: str) -> None:
    """Refuse weak passwords.

    Parameters
    ----------
    username : str
    password : str

    Raises
    ------
    AccountError
        When the password is shorter than :data:`MIN_PASSWORD_LENGTH`, contains the
        user name, or is one character repeated.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if username and username.lower() in password.lower():
        raise AccountError("password must not contain the user name")
    if len(set(password)) < 4:
        raise AccountError("password is too simple")


# Users and tokens --------------------------------------------------------------------


def _check_username(username: str) -> str:
    name = username.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError("user name must be 1-64 letters, digits or . _ - @")
    return name


def get_user(session: Session, *, username: str) -> User | None:
    """Return the user named ``username``, or None.

    Parameters
    ----------
    session : Session
    username : str

    Returns
    -------
    User or None
    """
    return session.scalar(select(User).where(User.username == username.strip()))


def create_user(session: Session, *, username: str, password: str | None, role: str) -> User:
    """Create a local account (``triage-node user add``).

    Parameters
    ----------
    session : Session
        Open session; flushed, not committed.
    username : str
        Letters, digits and ``. _ - @``; unique.
    password : str or None
        Must pass :func:`check_password_policy`; stored as an Argon2id hash. None
        (and only None) for a ``service`` account, which is token-only.
    role : str
        ``radiologist``, ``admin`` or ``service``.

    Returns
    -------
    User

    Raises
    ------
    AccountError
        When the name is invalid or taken, the role unknown, the password weak, or
        given for a service account (missing for a person).
    """
    name = _check_username(username)
    try:
        role = Role(role).value
    except ValueError:
        raise AccountError(f"role must be one of {', '.join(r.value for r in Role)}") from None
    if get_user(session, username=name) is not None:
        raise AccountError(f"user {name!r} exists")
    if role == Role.SERVICE.value:
        if password is not None:
            raise AccountError(
                "service accounts are token-only: no password (create a token with"
                " triage-node token add)"
            )
    elif password is None:
        raise AccountError("a password is needed")
    else:
        check_password_policy(name, password)
    user = User(
        username=name,
        password_hash=hash_password(password) if password is not None else None,
        role=role,
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, *, username: str, password: str) -> User:
    """Replace a user's password and end their web sessions.

    Parameters
    ----------
    session : Session
    username : str
    password : str

    Returns
    -------
    User

    Raises
    ------
    AccountError
        When the user does not exist or the password is weak.
    """
    user = get_user(session, username=username)
    if user is None:
        raise AccountError(f"no user {username!r}")
    if user.role == Role.SERVICE.value:
        raise AccountError(f"{user.username} is a service account: token-only, no password")
    check_password_policy(user.username, password)
    user.password_hash = hash_password(password)
    now = utcnow()
    for web in session.scalars(
        select(WebSession).where(WebSession.user_id == user.id, WebSession.ended_at.is_(None))
    ):
        web.ended_at = now
    session.flush()
    return user


def hash_token(token: str) -> str:
    """SHA-256 (hex) of a bearer token, as stored.

    Parameters
    ----------
    token : str

    Returns
    -------
    str
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    session: Session,
    *,
    username: str,
    name: str,
    expires_at: datetime | None = None,
) -> tuple[str, ApiToken]:
    """Create a bearer token for a user (``triage-node token add``).

    The token is returned once and only its SHA-256 is stored.

    Parameters
    ----------
    session : Session
    username : str
        The account the token acts as (often a ``service`` account for the RIS).
    name : str
        What the token is for, e.g. ``RIS``.
    expires_at : datetime, optional
        When the token stops working (default: never; revoke it instead).

    Returns
    -------
    tuple of (str, ApiToken)
        The token text (give it to the system) and its row.

    Raises
    ------
    AccountError
        When the user does not exist or is inactive.
    """
    user = get_user(session, username=username)
    if user is None or not user.active:
        raise AccountError(f"no active user {username!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        name=name.strip()[:64] or "token",
        token_hash=hash_token(token),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return token, row


def revoke_token(session: Session, *, token_id: int) -> ApiToken:
    """Revoke a bearer token.

    Parameters
    ----------
    session : Session
    token_id : int

    Returns
    -------
    ApiToken

    Raises
    ------
    AccountError
        When there is no such token.
    """
    row = session.get(ApiToken, token_id)
    if row is None:
        raise AccountError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    """Every bearer token (never the token text: only its hash is stored), oldest first.

    Parameters
    ----------
    session : Session

    Returns
    -------
    list of ApiToken
        With ``user`` loaded.
    """
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def token_state(token: ApiToken, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired``.

    Parameters
    ----------
    token : ApiToken
    now : datetime
        Aware UTC time.

    Returns
    -------
    str
    """
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and as_utc(token.expires_at) <= now:
        return "expired"
    return "active"
