"""Recording instances and the study stability rule, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from tests.conftest import wait_until
from worklist.core.clock import as_utc, utcnow
from worklist.core.contracts import InstanceInfo, RecordOutcome
from worklist.ingest import record_instance
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


def test_resend_refreshes_the_row_and_extends_the_quiet_period(session_factory) -> None:
    t0 = utcnow() - timedelta(seconds=60)
    with session_factory.begin() as s:
        assert record_instance(s, info=_info("4.1", study="7.7", series="7.7.1"), now=t0) == (
            RecordOutcome.NEW
        )
    resent = replace(_info("4.1", study="7.7", series="7.7.1"), file_path="/x/4.1.dcm")
    with session_factory.begin() as s:
        assert record_instance(s, info=resent, now=t0 + timedelta(seconds=30)) == (
            RecordOutcome.DUPLICATE
        )
    with session_factory() as s:
        instance = s.scalars(select(Instance)).one()
        study = s.scalars(select(Study)).one()
        assert (instance.file_path, instance.receive_count) == ("/x/4.1.dcm", 2)
        assert as_utc(instance.received_at) == t0 + timedelta(seconds=30)
        assert study.instance_count == 1
        assert as_utc(study.last_received_at) == t0 + timedelta(seconds=30)
        assert as_utc(study.first_received_at) == t0


def test_new_series_in_a_known_study(session_factory) -> None:
    with session_factory.begin() as s:
        record_instance(s, info=_info("5.1", study="6.6", series="6.6.1"))
        record_instance(s, info=_info("5.2", study="6.6", series="6.6.2"))
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        assert s.scalar(select(func.count()).select_from(Series)) == 2
        assert s.scalar(select(Study.instance_count)) == 2


def _wait_for_lock_wait(session_factory) -> None:
    def blocked() -> bool:
        with session_factory() as s:
            return bool(
                s.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                )
            )

    wait_until(blocked, timeout=10, what="the second transaction to wait on the first")


@pytest.mark.parametrize("same_instance", [False, True])
def test_concurrent_first_instances_of_a_study_postgresql(
    session_factory, same_instance: bool
) -> None:
    """Two transactions create the same study (and maybe instance) at once: no error."""
    if session_factory.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers with BEGIN IMMEDIATE")
    first = session_factory()
    try:
        assert record_instance(first, info=_info("6.1", study="5.5", series="5.5.1")) == (
            RecordOutcome.NEW
        )
        second_sop = "6.1" if same_instance else "6.2"
        with ThreadPoolExecutor(max_workers=1) as pool:

            def second() -> RecordOutcome:
                with session_factory.begin() as s:
                    return record_instance(s, info=_info(second_sop, study="5.5", series="5.5.1"))

            future = pool.submit(second)
            _wait_for_lock_wait(session_factory)
            first.commit()
            outcome = future.result(timeout=30)
    finally:
        first.close()
    expected = RecordOutcome.DUPLICATE if same_instance else RecordOutcome.NEW
    assert outcome == expected
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        assert s.scalar(select(func.count()).select_from(Series)) == 1
        count = 1 if same_instance else 2
        assert s.scalar(select(func.count()).select_from(Instance)) == count
        assert s.scalar(select(Study.instance_count)) == count


def test_seconds_until_next_stable(session_factory) -> None:
    from worklist.stability import seconds_until_next_stable

    t0 = utcnow()
    with session_factory() as s:
        assert seconds_until_next_stable(s, quiet_seconds=5, now=t0) is None
    with session_factory.begin() as s:
        record_instance(s, info=_info("1.1"), now=t0)
        record_instance(
            s, info=_info("2.1", study="2.3", series="2.3.1"), now=t0 + timedelta(seconds=2)
        )
    with session_factory() as s:
        # the earliest receiving study decides
        assert seconds_until_next_stable(s, quiet_seconds=5, now=t0 + timedelta(seconds=1)) == 4.0
        assert seconds_until_next_stable(s, quiet_seconds=5, now=t0 + timedelta(seconds=9)) == 0.0


def test_watcher_hands_a_study_off_when_it_becomes_stable_not_a_poll_later(
    session_factory,
) -> None:
    """Poll every 30 s, quiet period 0.5 s: the study is handed off about 0.5 s after
    its last instance, because the watcher wakes when the quiet period ends."""
    from dicom_scp.watcher import StabilityWatcher

    with session_factory.begin() as s:
        record_instance(s, info=_info("1.1"))
    queue = FakeQueue()
    watcher = StabilityWatcher(session_factory, queue, quiet_seconds=0.5, poll_seconds=30)
    assert watcher.next_wait() <= 0.5
    watcher.start()
    try:
        wait_until(lambda: queue.sent, timeout=10, what="the study handed off")
    finally:
        watcher.stop()
    assert len(queue.sent) == 1
    assert watcher.next_wait() == 30  # nothing receiving: back to the poll
