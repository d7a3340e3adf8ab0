"""Accounts: the password and token services.

Passwords are Argon2id hashes, bearer tokens are stored as their SHA-256; the tables
(:class:`~worklist.tables.User`, :class:`~worklist.tables.ApiToken`...) and the roles
(:class:`~worklist.tables.Role`) are in :mod:`worklist.tables`. Service functions take
``session=`` first and flush but do not commit; the caller owns the transaction.

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

from worklist.core.clock import utcnow
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
    "revoke_token",
    "set_password",
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


def create_user(session: Session, *, username: str, password: str, role: str) -> User:
    """Create a local account (``triage-node user add``).

    Parameters
    ----------
    session : Session
        Open session; flushed, not committed.
    username : str
        Letters, digits and ``. _ - @``; unique.
    password : str
        Must pass :func:`check_password_policy`; stored as an Argon2id hash.
    role : str
        ``radiologist``, ``admin`` or ``service``.

    Returns
    -------
    User

    Raises
    ------
    AccountError
        When the name is invalid or taken, the role unknown or the password weak.
    """
    name = _check_username(username)
    try:
        role = Role(role).value
    except ValueError:
        raise AccountError(f"role must be one of {', '.join(r.value for r in Role)}") from None
    if get_user(session, username=name) is not None:
        raise AccountError(f"user {name!r} exists")
    check_password_policy(name, password)
    user = User(
        username=name,
        password_hash=hash_password(password),
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
