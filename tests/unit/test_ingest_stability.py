"""Recording instances and the study stability rule, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from worklist.ingest import InstanceInfo, RecordOutcome, record_instance, utcnow
from worklist.stability import mark_stable_studies, run_stability_round
from worklist.tables import Instance, Series, Study, StudyState


def _info(sop: str, study: str = "1.2.3", series: str = "1.2.3.1") -> InstanceInfo:
    return InstanceInfo(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path=f"/spool/{sop}.dcm",
        size_bytes=100,
        modality="CR",
        calling_ae="MODALITY",
    )


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def enqueue(self, study_id: int, revision: int) -> None:
        self.sent.append((study_id, revision))


class BrokenQueue:
    def enqueue(self, study_id: int, revision: int) -> None:
        raise ConnectionError("broker down")


def test_record_is_idempotent(session_factory) -> None:
    with session_factory.begin() as s:
        assert record_instance(s, info=_info("1.2.3.1.1")) is RecordOutcome.NEW
    with session_factory.begin() as s:
        assert record_instance(s, info=_info("1.2.3.1.1")) is RecordOutcome.DUPLICATE
        assert record_instance(s, info=_info("1.2.3.1.2")) is RecordOutcome.NEW
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 2
        assert s.scalar(select(func.count()).select_from(Series)) == 1
        study = s.scalar(select(Study))
        assert study.instance_count == 2
        dup = s.scalar(select(Instance).where(Instance.sop_instance_uid == "1.2.3.1.1"))
        assert dup.receive_count == 2


def test_stable_after_quiet_period_and_handed_off_once(session_factory) -> None:
    t0 = utcnow()
    with session_factory.begin() as s:
        record_instance(s, info=_info("1.1"), now=t0)
        record_instance(s, info=_info("1.2"), now=t0 + timedelta(seconds=3))
    with session_factory.begin() as s:
        # 5 s quiet period: at t0+6 the second instance is only 3 s old.
        assert mark_stable_studies(s, quiet_seconds=5, now=t0 + timedelta(seconds=6)) == []
    with session_factory.begin() as s:
        moved = mark_stable_studies(s, quiet_seconds=5, now=t0 + timedelta(seconds=9))
    assert [(m.revision) for m in moved] == [1]
    queue = FakeQueue()
    run_stability_round(session_factory, queue, quiet_seconds=5)
    run_stability_round(session_factory, queue, quiet_seconds=5)
    assert queue.sent == [(moved[0].study_id, 1)]


def test_late_instance_reopens_for_new_revision(session_factory) -> None:
    t0 = utcnow() - timedelta(seconds=60)
    with session_factory.begin() as s:
        record_instance(s, info=_info("2.1", study="9.9", series="9.9.1"), now=t0)
    queue = FakeQueue()
    run_stability_round(session_factory, queue, quiet_seconds=5)
    assert [rev for _, rev in queue.sent] == [1]
    with session_factory.begin() as s:
        s.execute(Study.__table__.update().values(state=StudyState.TRIAGED))
    with session_factory.begin() as s:
        record_instance(s, info=_info("2.1", study="9.9", series="9.9.1"), now=t0)
    with session_factory() as s:
        assert s.scalar(select(Study.state)) == StudyState.TRIAGED  # a re-send does not reopen
    with session_factory.begin() as s:
        record_instance(s, info=_info("2.2", study="9.9", series="9.9.1"), now=t0)
    with session_factory() as s:
        assert s.scalar(select(Study.state)) == StudyState.RECEIVING
    run_stability_round(session_factory, queue, quiet_seconds=5)
    assert [rev for _, rev in queue.sent] == [1, 2]


def test_broker_failure_keeps_revision_for_next_round(session_factory) -> None:
    t0 = utcnow() - timedelta(seconds=60)
    with session_factory.begin() as s:
        record_instance(s, info=_info("3.1", study="8.8", series="8.8.1"), now=t0)
    assert run_stability_round(session_factory, BrokenQueue(), quiet_seconds=5) == []
    queue = FakeQueue()
    run_stability_round(session_factory, queue, quiet_seconds=5)
    assert [rev for _, rev in queue.sent] == [1]
