"""Prometheus metrics of the node, read from the database at each scrape.

The SCP, the workers and the API are separate processes (often machines); the
database is what they share, so the API's collector derives every number from it
and the values agree whichever API process is scraped. All names start with
``triage_``:

``triage_instances_received_total``
    Instances stored (distinct SOP Instance UIDs).
``triage_studies_triaged_total{status,decision}``
    Triage results (one per study revision).
``triage_queue_depth{state}``
    Studies waiting: ``receiving``, ``queued``, ``triaging``.
``triage_worklist_unread``
    Triaged studies nobody has claimed or completed.
``triage_time_to_triage_seconds``
    Histogram: first instance received -> first result of the study.
``triage_delivery_failures_total``
    Deliveries (SRs and heatmap SCs) that gave up (outbox rows ``failed``).
``triage_deliveries{state}``
    Outbox rows by state.
``triage_deliveries_by_kind{kind,state}``
    Outbox rows by what they send (``sr``, ``heatmap_sc``) and state.
``triage_abnormal_rate{window}``
    Share of results decided ``abnormal`` over the last ``24h`` / ``7d``.
``triage_feedback_total``, ``triage_feedback_agreement_ratio{group,value}``,
``triage_feedback_sensitivity_ratio{group,value}``,
``triage_feedback_specificity_ratio{group,value}``
    Live agreement with the radiologists' labels (see
    :func:`worklist.monitoring.agreement_report`); ``group`` is ``overall``, ``sex`` or
    ``age_band``.
``triage_turnaround_seconds{group,value,stat}``, ``triage_turnaround_studies{group,value}``
    Arrival -> completed read of the studies that arrived in the last 7 days, by
    stored priority level (``group="level"``) and by the radiologists' label
    (``group="truth"``); ``stat`` is ``mean``, ``p50``, ``p90`` or ``max``
    (:mod:`worklist.turnaround`, the definitions of the reading-order simulator).
``triage_read_wait_longest_seconds``
    The longest current wait of a study nobody has opened (0 when none waits).
``triage_read_over_cap{scope}``
    Studies over the wait cap: ``waiting`` now, or in the 7-day ``window`` (opened
    after the cap or still waiting beyond it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from worklist.core.clock import as_utc, utcnow
from worklist.monitoring import agreement_report
from worklist.tables import Delivery, Instance, Study, StudyRead, StudyState, TriageResult
from worklist.time_to_read import time_to_read_report

__all__ = ["TIME_TO_TRIAGE_BUCKETS", "DatabaseCollector", "make_registry"]

log = logging.getLogger(__name__)

#: Buckets of the time-to-triage histogram (seconds).
TIME_TO_TRIAGE_BUCKETS = (5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


class DatabaseCollector(Collector):
    """Collects the node's metrics from the database at scrape time.

    Parameters
    ----------
    session_factory : sessionmaker
    wait_cap : timedelta
        The worklist's wait cap (``Settings.wait_cap_minutes``).
    """

    def __init__(
        self, session_factory: sessionmaker, *, wait_cap: timedelta = timedelta(minutes=60)
    ) -> None:
        self._session_factory = session_factory
        self._wait_cap = wait_cap

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (see the module docstring)."""
        now = utcnow()
        with self._session_factory() as session:
            received = session.scalar(select(func.count(Instance.id))) or 0
            family = CounterMetricFamily(
                "triage_instances_received", "Instances received and stored."
            )
            family.add_metric([], received)
            yield family

            family = CounterMetricFamily(
                "triage_studies_triaged",
                "Triage results (study revisions) by status and decision.",
                labels=["status", "decision"],
            )
            for status, decision, count in session.execute(
                select(
                    TriageResult.status, TriageResult.decision, func.count(TriageResult.id)
                ).group_by(TriageResult.status, TriageResult.decision)
            ):
                family.add_metric([status, decision or ""], count)
            yield family

            waiting = dict(
                session.execute(
                    select(Study.state, func.count(Study.id)).group_by(Study.state)
                ).all()
            )
            family = GaugeMetricFamily(
                "triage_queue_depth", "Studies not triaged yet, by state.", labels=["state"]
            )
            for state in (StudyState.RECEIVING, StudyState.QUEUED, StudyState.TRIAGING):
                family.add_metric([state.value], waiting.get(state.value, 0))
            yield family

            unread = session.scalar(
                select(func.count(Study.id))
                .outerjoin(StudyRead, StudyRead.study_id == Study.id)
                .where(StudyRead.id.is_(None), Study.state == StudyState.TRIAGED)
            )
            family = GaugeMetricFamily(
                "triage_worklist_unread", "Triaged studies nobody has claimed or completed."
            )
            family.add_metric([], unread or 0)
            yield family

            yield self._time_to_triage(session)

            by_kind: dict[tuple[str, str], int] = {
                (kind, state): count
                for kind, state, count in session.execute(
                    select(Delivery.kind, Delivery.state, func.count(Delivery.id)).group_by(
                        Delivery.kind, Delivery.state
                    )
                )
            }
            deliveries: dict[str, int] = {}
            for (_kind, state), count in by_kind.items():
                deliveries[state] = deliveries.get(state, 0) + count
            family = CounterMetricFamily(
                "triage_delivery_failures",
                "Deliveries (SRs, heatmap SCs) that gave up after their retries.",
            )
            family.add_metric([], deliveries.get("failed", 0))
            yield family
            family = GaugeMetricFamily(
                "triage_deliveries", "Outbox rows (SRs, heatmap SCs) by state.", labels=["state"]
            )
            for state in ("pending", "sending", "delivered", "failed"):
                family.add_metric([state], deliveries.get(state, 0))
            yield family
            family = GaugeMetricFamily(
                "triage_deliveries_by_kind",
                "Outbox rows by what they send (sr, heatmap_sc) and state.",
                labels=["kind", "state"],
            )
            for kind in ("sr", "heatmap_sc"):
                for state in ("pending", "sending", "delivered", "failed"):
                    family.add_metric([kind, state], by_kind.get((kind, state), 0))
            yield family

            family = GaugeMetricFamily(
                "triage_abnormal_rate",
                "Share of triage results decided abnormal in a window.",
                labels=["window"],
            )
            for label, span in (("24h", timedelta(hours=24)), ("7d", timedelta(days=7))):
                total, abnormal = session.execute(
                    select(
                        func.count(TriageResult.id),
                        func.count(TriageResult.id).filter(TriageResult.decision == "abnormal"),
                    ).where(
                        TriageResult.finished_at >= now - span,
                        TriageResult.decision.is_not(None),
                    )
                ).one()
                family.add_metric([label], (abnormal / total) if total else float("nan"))
            yield family

            yield from self._feedback(session)

            yield from self._time_to_read(session, now)

    def _time_to_triage(self, session: object) -> Metric:
        rows = session.execute(  # type: ignore[attr-defined]
            select(Study.id, Study.first_received_at, TriageResult.finished_at)
            .join(TriageResult, TriageResult.study_id == Study.id)
            .order_by(Study.id, TriageResult.revision)
        ).all()
        firsts: dict[int, float] = {}
        for study_id, received, finished in rows:
            if study_id not in firsts:
                firsts[study_id] = max(0.0, (as_utc(finished) - as_utc(received)).total_seconds())
        values = list(firsts.values())
        buckets = []
        for bound in TIME_TO_TRIAGE_BUCKETS:
            buckets.append((str(float(bound)), sum(v <= bound for v in values)))
        buckets.append(("+Inf", len(values)))
        return HistogramMetricFamily(
            "triage_time_to_triage_seconds",
            "From a study's first received instance to its first triage result.",
            buckets=buckets,
            sum_value=sum(values),
        )

    def _feedback(self, session: object) -> Iterator[Metric]:
        report = agreement_report(session)  # type: ignore[arg-type]
        total = GaugeMetricFamily(
            "triage_feedback_total", "Radiologist feedback rows with an AI decision."
        )
        total.add_metric([], report["overall"]["n"])
        yield total
        families = {
            name: GaugeMetricFamily(
                f"triage_feedback_{name}_ratio",
                f"AI {name} against the radiologists' labels (feedback).",
                labels=["group", "value"],
            )
            for name in ("agreement", "sensitivity", "specificity")
        }
        groups = [("overall", "all", report["overall"])]
        groups += [("sex", k, v) for k, v in report["by_sex"].items()]
        groups += [("age_band", k, v) for k, v in report["by_age_band"].items()]
        for group, value, stats in groups:
            for name, family in families.items():
                ratio = stats[name]["value"]
                family.add_metric([group, value], float("nan") if ratio is None else ratio)
        yield from families.values()

    def _time_to_read(self, session: Any, now: Any) -> Iterator[Metric]:
        report = time_to_read_report(session, now=now, wait_cap=self._wait_cap, days=7)
        seconds = GaugeMetricFamily(
            "triage_turnaround_seconds",
            "Arrival to completed read, studies of the last 7 days, by level or label.",
            labels=["group", "value", "stat"],
        )
        studies = GaugeMetricFamily(
            "triage_turnaround_studies",
            "Completed reads of studies of the last 7 days, by level or label.",
            labels=["group", "value"],
        )
        for group, key in (("level", "by_level"), ("truth", "by_truth")):
            for value, summary in report[key].items():
                studies.add_metric([group, value], summary["n"])
                for stat in ("mean", "p50", "p90", "max"):
                    seconds.add_metric([group, value, stat], summary[stat])
        yield seconds
        yield studies
        longest = GaugeMetricFamily(
            "triage_read_wait_longest_seconds",
            "The longest current wait of a study nobody has opened (0: none waits).",
        )
        longest.add_metric([], report["waiting"]["longest_wait_seconds"] or 0.0)
        yield longest
        over = GaugeMetricFamily(
            "triage_read_over_cap",
            "Studies over the wait cap: waiting now, or in the last 7 days.",
            labels=["scope"],
        )
        over.add_metric(["waiting"], report["waiting"]["over_cap"])
        over.add_metric(["window"], report["window_over_cap"])
        yield over


def make_registry(
    session_factory: sessionmaker, *, wait_cap: timedelta = timedelta(minutes=60)
) -> CollectorRegistry:
    """A registry holding only the node's database collector.

    Parameters
    ----------
    session_factory : sessionmaker
    wait_cap : timedelta
        The worklist's wait cap (``Settings.wait_cap_minutes``).

    Returns
    -------
    CollectorRegistry
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory, wait_cap=wait_cap))
    return registry
