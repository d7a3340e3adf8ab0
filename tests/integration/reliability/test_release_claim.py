"""``release_claim``: a revision given back (SR not writable) is queued again,
re-sent after the lease, and the attempt does not count towards giving up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from worklist.core.clock import utcnow
from worklist.results import ClaimStatus, claim_revision, release_claim, stalled_revisions
from worklist.tables import Study, StudyState, TriageClaim


def test_release_claim_requeues_uncounted(session_factory: Any) -> None:
    now = utcnow()
    with session_factory.begin() as session:
        study = Study(
            study_instance_uid="1.2.3",
            state=StudyState.QUEUED,
            revision=1,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
            stable_at=now,
            dispatched_at=now,
        )
        session.add(study)
        session.flush()
        study_id = study.id
    for _ in range(5):  # more than MAX_ATTEMPTS claims, each given back
        with session_factory.begin() as session:
            claim = claim_revision(session, study_id=study_id, revision=1, worker="w:1")
            assert claim.status is ClaimStatus.CLAIMED and claim.attempts == 1
        with session_factory.begin() as session:
            assert release_claim(session, study_id=study_id, revision=1, now=now)
    with session_factory() as session:
        assert session.get(Study, study_id).state == StudyState.QUEUED
        assert session.query(TriageClaim).one().attempts == 0
        later = now + timedelta(seconds=11)
        assert stalled_revisions(session, lease_seconds=10, now=later) == [(study_id, 1)]
        assert stalled_revisions(session, lease_seconds=10, now=now) == []
    with session_factory.begin() as session:  # not triaging any more: nothing to release
        assert not release_claim(session, study_id=study_id, revision=1)
