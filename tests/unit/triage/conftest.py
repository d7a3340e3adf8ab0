"""Fixtures for the triage tests: a tiny model with a card, ingesting files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.ingest import ingest_file
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX classifier (models/ contract) with its card embedded."""
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    build_tiny_model(path, input_size=64)
    return path


@pytest.fixture
def tiny_classifier(tiny_model: Path):  # type: ignore[no-untyped-def]
    """The tiny model loaded with models.runtime."""
    from models.runtime import Classifier

    return Classifier.load(tiny_model)


def make_stable(session_factory) -> list:  # type: ignore[no-untyped-def]
    """Mark every receiving study stable now; return the hand-offs."""
    from worklist.core.clock import utcnow
    from worklist.stability import mark_stable_studies

    with session_factory.begin() as session:
        return mark_stable_studies(session, quiet_seconds=0.0, now=utcnow() + timedelta(seconds=1))


@pytest.fixture
def ingest(session_factory, tmp_path: Path) -> Callable[[Path], int]:  # type: ignore[no-untyped-def]
    """Ingest a file into the test database and spool; returns the study id."""
    return lambda path: ingest_file(session_factory, Path(path), tmp_path / "spool")
