"""Scaled out on PostgreSQL and Redis with two inference workers: both score the shadow
model beside the champion, and a promotion reaches both without a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from tests.conftest import REDIS_URL, wait_until
from tests.integration.scp.helpers import storescu
from tests.integration.site.helpers import node_cli
from tests.integration.triage.conftest import pacs, start_worker_process  # noqa: F401
from tests.integration.triage.test_end_to_end import make_node_settings, start_scp, wait_for_results
from tests.support.tiny_model import build_tiny_model
from tests.unit.site.conftest import synthetic_dx
from triage.pipeline import BATCH
from worklist.tables import ShadowResult, Study, TriageClaim, TriageResult


def _send(settings: Any, tmp_path: Path, tag: str, n: int) -> list[str]:
    files = [
        synthetic_dx(
            tmp_path / tag / f"{i}.dcm",
            brightness=0.2 + 0.6 * (i % 2),
            patient_id=f"{tag}{i}",
            patient_name=f"Doe^{tag}{i}",
            seed=i,
        )
        for i in range(n)
    ]
    assert storescu(settings.dicom_port, files).returncode == 0
    return [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files]


def _workers_of(node: Any, uids: list[str]) -> set[str]:
    """The worker processes (``host:pid``) that triaged these studies, alone or in a
    batch (``batch@host:pid``)."""
    with node.session_factory() as s:
        return {
            worker.removeprefix(BATCH)
            for worker in s.scalars(
                select(TriageClaim.claimed_by)
                .join(Study, Study.id == TriageClaim.study_id)
                .where(Study.study_instance_uid.in_(uids))
            )
        }


@pytest.mark.redis
@pytest.mark.postgres
def test_two_workers_follow_the_registry(
    tmp_path: Path,
    pacs: Any,  # noqa: F811 - the fixture
    postgres_url: str,
) -> None:
    import redis

    broker = REDIS_URL.rsplit("/", 1)[0] + "/12"
    try:
        redis.Redis.from_url(broker).ping()
    except redis.RedisError:
        pytest.skip("Redis is not running")
    redis.Redis.from_url(broker).delete("inference", "delivery")
    champion = tmp_path / "a.onnx"
    build_tiny_model(champion, name="tiny-a", weight=4.0)
    challenger = tmp_path / "b.onnx"
    build_tiny_model(challenger, name="tiny-b", weight=-4.0)
    settings = make_node_settings(
        tmp_path, champion, pacs.destination, database_url=postgres_url, broker_url=broker
    )
    node = start_scp(settings)
    try:
        assert (
            node_cli(settings, "model", "add", str(challenger), "--shadow", timeout=120).returncode
            == 0
        )
        node.workers.append(start_worker_process(settings, "inference"))
        node.workers.append(start_worker_process(settings, "inference"))
        node.workers.append(start_worker_process(settings, "delivery", concurrency=2))

        before = _send(settings, tmp_path, "before", 10)
        results = wait_for_results(node, before, timeout=120)
        assert {r.model_name for r in results.values()} == {"tiny-a"}

        def shadows(uids: list[str]) -> list[ShadowResult]:
            with node.session_factory() as s:
                return list(
                    s.scalars(
                        select(ShadowResult)
                        .join(Study, Study.id == ShadowResult.study_id)
                        .where(Study.study_instance_uid.in_(uids))
                    )
                )

        rows = wait_until(
            lambda: len(shadows(before)) == 10 and shadows(before),
            timeout=60,
            what="shadow scores of both workers",
        )
        assert {r.model_name for r in rows} == {"tiny-b"}
        assert len(_workers_of(node, before)) == 2  # both workers scored, shadow included

        out = node_cli(
            settings, "model", "promote", "tiny-b", "--force", "--reason", "test", timeout=120
        )
        assert out.returncode == 0, out.stderr
        after = _send(settings, tmp_path, "after", 10)
        results = wait_for_results(node, after, timeout=120)
        assert {r.model_name for r in results.values()} == {"tiny-b"}
        assert len(_workers_of(node, after)) == 2  # the promotion reached both
        rows = wait_until(
            lambda: len(shadows(after)) == 10 and shadows(after),
            timeout=60,
            what="the old champion scoring in shadow",
        )
        assert {r.model_name for r in rows} == {"tiny-a"}
        listing = json.loads(node_cli(settings, "model", "list", "--json", timeout=120).stdout)
        assert [(m["name"], m["role"]) for m in listing] == [
            ("tiny-b", "champion"),
            ("tiny-a", "shadow"),
        ]
        with node.session_factory() as s:
            assert s.scalar(select(func.count()).select_from(TriageResult)) == 20
    finally:
        node.stop()
