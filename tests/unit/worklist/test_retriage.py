"""request_retriage: a finished study gets the next revision once; others are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.unit.api.factories import make_study
from worklist.audit import Actor
from worklist.retriage import RetriageError, request_retriage
from worklist.tables import AuditEvent, Study

ACTOR = Actor(None, "cli:test", "admin", "cli", None)


def test_retriage_once_then_refused_until_done(session_factory: Any, tmp_path: Path) -> None:
    with session_factory() as session:
        made = make_study(
            session, tmp_path, name="RE", priority=30, decision="abnormal", probability=0.7
        )
        uid = made.study.study_instance_uid
        session.commit()
        done = request_retriage(session, study_instance_uid=uid, actor=ACTOR, reason="model 2")
        session.commit()
        assert (done.previous_revision, done.revision) == (1, 2)
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert (study.state, study.revision, study.dispatched_at) == ("queued", 2, None)
        with pytest.raises(RetriageError, match="is queued"):
            request_retriage(session, study_instance_uid=uid, actor=ACTOR)
        session.rollback()
        with pytest.raises(RetriageError, match="no study"):
            request_retriage(session, study_instance_uid="1.2.3", actor=ACTOR)
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "retriage")).all()
        assert [(e.study_instance_uid, e.username) for e in events] == [(uid, "cli:test")]
