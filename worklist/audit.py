"""The audit log: every view of patient data, every action, every sign-in.

Rows are appended in the caller's transaction (an action and its audit row commit
together). Patient names and IDs are never written: a study is referenced by its
Study Instance UID, an image by its SOP Instance UID.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worklist.core.clock import utcnow
from worklist.tables import AuditEvent

__all__ = ["Action", "Actor", "Outcome", "count_events", "list_events", "record"]


class Action(StrEnum):
    """What was done (``AuditEvent.action``)."""

    LOGIN = "login"
    LOGOUT = "logout"
    VIEW_WORKLIST = "view_worklist"
    VIEW_STUDY = "view_study"
    VIEW_IMAGE = "view_image"
    OPEN_VIEWER = "open_viewer"
    CLAIM = "claim"
    RELEASE = "release"
    COMPLETE = "complete"
    FEEDBACK = "feedback"
    VIEW_AUDIT = "view_audit"
    VIEW_MONITORING = "view_monitoring"
    ACCESS_DENIED = "access_denied"
    RESEND_SR = "resend_sr"
    RELEASE_HOLD = "release_hold"
    """An administrator released a study held for a patient mismatch."""
    RETRIAGE = "retriage"
    MODEL_ADD = "model_add"
    MODEL_PROMOTE = "model_promote"
    MODEL_ROLLBACK = "model_rollback"
    DATASET_EXPORT = "dataset_export"


class Outcome(StrEnum):
    """How it went (``AuditEvent.outcome``)."""

    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Actor:
    """Who acts: the authenticated user and how they authenticated.

    Attributes
    ----------
    user_id : int or None
    username : str or None
    role : str or None
    auth_method : str or None
        ``session``, ``token`` or ``password``.
    client_ip : str or None
    """

    user_id: int | None
    username: str | None
    role: str | None
    auth_method: str | None
    client_ip: str | None


def record(
    session: Session,
    *,
    actor: Actor,
    action: str,
    outcome: str = Outcome.SUCCESS,
    study_id: int | None = None,
    study_instance_uid: str | None = None,
    object_uid: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Append an audit event (flushed, committed by the caller).

    Parameters
    ----------
    session : Session
    actor : Actor
    action : str
        An :class:`Action`.
    outcome : str
        An :class:`Outcome`.
    study_id, study_instance_uid : optional
        The study concerned.
    object_uid : str, optional
        The image concerned (SOP Instance UID).
    detail : mapping, optional
        Small JSON-serialisable context without patient identifiers (filters used,
        the label given, the reason for a denial).
    at : datetime, optional
        Event time (default now).

    Returns
    -------
    AuditEvent
    """
    text = json.dumps(dict(detail), sort_keys=True, default=str)[:1024] if detail else None
    event = AuditEvent(
        at=at or utcnow(),
        user_id=actor.user_id,
        username=actor.username,
        role=actor.role,
        auth_method=actor.auth_method,
        action=str(action),
        outcome=str(outcome),
        study_id=study_id,
        study_instance_uid=study_instance_uid,
        object_uid=object_uid,
        client_ip=actor.client_ip,
        detail=text,
    )
    session.add(event)
    session.flush()
    return event


def count_events(
    session: Session,
    *,
    action: str,
    outcome: str,
    since: datetime,
    username: str | None = None,
    client_ip: str | None = None,
) -> int:
    """Count events of one kind since a time, for a user name and/or an address.

    Parameters
    ----------
    session : Session
    action, outcome : str
    since : datetime
    username, client_ip : str, optional

    Returns
    -------
    int
    """
    query = select(func.count(AuditEvent.id)).where(
        AuditEvent.action == str(action),
        AuditEvent.outcome == str(outcome),
        AuditEvent.at >= since,
    )
    if username is not None:
        query = query.where(AuditEvent.username == username)
    if client_ip is not None:
        query = query.where(AuditEvent.client_ip == client_ip)
    return int(session.scalar(query) or 0)


def list_events(
    session: Session,
    *,
    limit: int = 200,
    before_id: int | None = None,
    username: str | None = None,
    action: str | None = None,
    study_instance_uid: str | None = None,
) -> list[dict[str, Any]]:
    """Return audit events, newest first.

    Parameters
    ----------
    session : Session
    limit : int
    before_id : int, optional
        Page on: events with a smaller id.
    username, action, study_instance_uid : str, optional
        Filters.

    Returns
    -------
    list of dict
    """
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if username:
        query = query.where(AuditEvent.username == username)
    if action:
        query = query.where(AuditEvent.action == action)
    if study_instance_uid:
        query = query.where(AuditEvent.study_instance_uid == study_instance_uid)
    return [
        {
            "id": e.id,
            "at": e.at.isoformat() if e.at else None,
            "username": e.username,
            "role": e.role,
            "auth_method": e.auth_method,
            "action": e.action,
            "outcome": e.outcome,
            "study_instance_uid": e.study_instance_uid,
            "object_uid": e.object_uid,
            "client_ip": e.client_ip,
            "detail": json.loads(e.detail) if e.detail else None,
        }
        for e in session.scalars(query)
    ]
