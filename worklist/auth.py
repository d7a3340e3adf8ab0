"""Authentication for the API and the web page: sessions and bearer tokens.

- **People** sign in on ``/login`` with a local account (Argon2id hash, see
  :mod:`worklist.accounts`); they get a session cookie (``HttpOnly``,
  ``SameSite=Strict``) holding a random key. The database keeps only an HMAC of the
  key under the session secret, so a leaked table opens no session. State-changing
  requests of a session must carry its CSRF token in the ``X-CSRF-Token`` header.
- **Systems** (RIS) send ``Authorization: Bearer <token>`` (``triage-node token add``).
- Failed sign-ins are counted in the audit log; past ``login_max_failures`` per user
  name, or five times that per client address, within ``login_window_seconds``, the
  answer is HTTP 429 without checking the password.

The FastAPI dependencies that ask this module who the caller is, and check the role,
are in :mod:`worklist.http.deps`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from worklist import audit
from worklist.accounts import get_user, hash_token, verify_password
from worklist.audit import Action, Actor, Outcome
from worklist.core.clock import as_utc, utcnow
from worklist.core.settings import Settings
from worklist.tables import ApiToken, Role, User, WebSession

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Authenticator",
    "LoginFailed",
    "LoginRateLimited",
    "Principal",
    "ServiceAccountLogin",
    "session_key",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "triage_session"
CSRF_HEADER = "X-CSRF-Token"
_TOUCH_EVERY = timedelta(seconds=60)


class LoginFailed(Exception):
    """Wrong user name or password (the two are not told apart)."""


class ServiceAccountLogin(LoginFailed):
    """A service account tried the sign-in page: it is token-only."""


class LoginRateLimited(Exception):
    """Too many failed sign-ins; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; retry in {retry_after} s")
        self.retry_after = retry_after


def session_key(settings: Settings) -> bytes:
    """The key that signs web sessions.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    bytes
        ``settings.session_secret``, or, when it is empty, a random key for this
        process (a warning says that sessions will not survive a restart).
    """
    secret = settings.session_secret.get_secret_value()
    if secret:
        return secret.encode("utf-8")
    log.warning(
        "TRIAGE_SESSION_SECRET is not set: using a random key for this process; "
        "web sessions end when it restarts and are not shared between API processes"
    )
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes
    ----------
    user : User
    auth_method : str
        ``session`` or ``token``.
    client_ip : str or None
    session_token : str or None
        The cookie value (sessions only), for the CSRF token.
    """

    user: User
    auth_method: str
    client_ip: str | None
    session_token: str | None = None

    @property
    def role(self) -> str:
        """The user's role."""
        return self.user.role

    @property
    def actor(self) -> Actor:
        """This caller as the audit log records it."""
        return Actor(
            user_id=self.user.id,
            username=self.user.username,
            role=self.user.role,
            auth_method=self.auth_method,
            client_ip=self.client_ip,
        )


class Authenticator:
    """Signs people in and out and recognises sessions and bearer tokens.

    Parameters
    ----------
    settings : Settings
    key : bytes
        The session key (:func:`session_key`).
    """

    def __init__(self, settings: Settings, key: bytes) -> None:
        self._settings = settings
        self._key = key

    def _session_hash(self, token: str) -> str:
        return hmac.new(self._key, b"session:" + token.encode("utf-8"), hashlib.sha256).hexdigest()

    def csrf_token(self, session_token: str) -> str:
        """The CSRF token of a session (derived, never stored)."""
        return hmac.new(
            self._key, b"csrf:" + session_token.encode("utf-8"), hashlib.sha256
        ).hexdigest()

    def check_csrf(self, session_token: str | None, supplied: str | None) -> bool:
        """Tell whether ``supplied`` is the CSRF token of the session."""
        if not session_token or not supplied:
            return False
        return hmac.compare_digest(self.csrf_token(session_token), supplied)

    @property
    def session_lifetime(self) -> timedelta:
        """How long a web session lasts."""
        return timedelta(hours=self._settings.session_hours)

    def login(
        self, session: Session, *, username: str, password: str, client_ip: str | None
    ) -> tuple[str, User]:
        """Check a user name and password and open a web session.

        The attempt is audited and **committed** whatever its outcome, so that the
        rate limit counts it.

        Parameters
        ----------
        session : Session
        username, password : str
        client_ip : str or None

        Returns
        -------
        tuple of (str, User)
            The cookie value and the user.

        Raises
        ------
        LoginRateLimited
            Too many failures for this user name or address in the window.
        LoginFailed
            Unknown user, inactive account or wrong password.
        """
        name = username.strip()[:64]
        window = self._settings.login_window_seconds
        since = utcnow() - timedelta(seconds=window)
        limit = self._settings.login_max_failures
        anonymous = Actor(None, name or None, None, "password", client_ip)
        by_name = audit.count_events(
            session, action=Action.LOGIN, outcome=Outcome.FAILURE, since=since, username=name
        )
        by_ip = (
            audit.count_events(
                session,
                action=Action.LOGIN,
                outcome=Outcome.FAILURE,
                since=since,
                client_ip=client_ip,
            )
            if client_ip
            else 0
        )
        if by_name >= limit or by_ip >= 5 * limit:
            audit.record(
                session, actor=anonymous, action=Action.LOGIN, outcome=Outcome.RATE_LIMITED
            )
            session.commit()
            log.warning("sign-in rate limit reached (address %s)", client_ip)
            raise LoginRateLimited(int(window))
        user = get_user(session, username=name) if name else None
        if user is not None and user.active and user.role == Role.SERVICE.value:
            audit.record(
                session,
                actor=anonymous,
                action=Action.LOGIN,
                outcome=Outcome.DENIED,
                detail={"reason": "service account (token-only)"},
            )
            session.commit()
            raise ServiceAccountLogin(
                f"{user.username} is a service account: it uses a bearer token and cannot"
                " sign in to the web page"
            )
        ok = verify_password(user.password_hash if user is not None else None, password)
        if user is None or not ok or not user.active:
            audit.record(session, actor=anonymous, action=Action.LOGIN, outcome=Outcome.FAILURE)
            session.commit()
            raise LoginFailed("wrong user name or password")
        token = secrets.token_urlsafe(32)
        now = utcnow()
        # Housekeeping: forget sessions that ended or expired more than a day ago.
        session.execute(
            delete(WebSession).where(
                or_(
                    WebSession.expires_at < now - timedelta(days=1),
                    WebSession.ended_at < now - timedelta(days=1),
                )
            )
        )
        session.add(
            WebSession(
                user_id=user.id,
                session_hash=self._session_hash(token),
                created_at=now,
                expires_at=now + self.session_lifetime,
                last_seen_at=now,
                client_ip=client_ip,
            )
        )
        user.last_login_at = now
        audit.record(
            session,
            actor=Actor(user.id, user.username, user.role, "password", client_ip),
            action=Action.LOGIN,
        )
        session.commit()
        return token, user

    def logout(self, session: Session, *, principal: Principal) -> None:
        """End the caller's web session (audited; the caller commits).

        Parameters
        ----------
        session : Session
        principal : Principal
        """
        if principal.session_token:
            row = session.scalar(
                select(WebSession).where(
                    WebSession.session_hash == self._session_hash(principal.session_token)
                )
            )
            if row is not None and row.ended_at is None:
                row.ended_at = utcnow()
        audit.record(session, actor=principal.actor, action=Action.LOGOUT)

    def authenticate(
        self,
        session: Session,
        *,
        authorization: str | None,
        cookie: str | None,
        client_ip: str | None,
    ) -> Principal | None:
        """Recognise a bearer token or a session cookie.

        Parameters
        ----------
        session : Session
        authorization : str or None
            The ``Authorization`` header.
        cookie : str or None
            The session cookie.
        client_ip : str or None

        Returns
        -------
        Principal or None
            None when neither is present and valid.
        """
        now = utcnow()
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None
            row = session.scalar(
                select(ApiToken).where(ApiToken.token_hash == hash_token(value.strip()))
            )
            if row is None or row.revoked_at is not None:
                return None
            if row.expires_at is not None and as_utc(row.expires_at) <= now:
                return None
            if not row.user.active:
                return None
            if row.last_used_at is None or now - as_utc(row.last_used_at) > _TOUCH_EVERY:
                row.last_used_at = now
                session.commit()
            return Principal(row.user, "token", client_ip)
        if cookie:
            row = session.scalar(
                select(WebSession).where(WebSession.session_hash == self._session_hash(cookie))
            )
            if row is None or row.ended_at is not None or as_utc(row.expires_at) <= now:
                return None
            if not row.user.active:
                return None
            if now - as_utc(row.last_seen_at) > _TOUCH_EVERY:
                row.last_seen_at = now
                session.commit()
            return Principal(row.user, "session", client_ip, session_token=cookie)
        return None
