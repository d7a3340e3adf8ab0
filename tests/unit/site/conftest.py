"""Fixtures for the site-adaptation tests: tiny models with cards, a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.tiny_model import build_tiny_model


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., Path]:
    """Build a tiny ONNX model with a card: ``make_model("a", weight=4.0)`` -> path."""

    def _make(name: str, *, weight: float = 4.0, input_size: int = 64, **card: object) -> Path:
        from models.card import embed_card, read_card

        path = tmp_path / "incoming" / f"{name}.onnx"
        build_tiny_model(path, input_size=input_size, name=name, weight=weight)
        if card:
            current = read_card(path)
            embed_card(path, current.model_copy(update=card))
        return path

    return _make


@pytest.fixture
def actor():  # type: ignore[no-untyped-def]
    """An admin actor for the service functions."""
    from worklist.audit import Actor

    return Actor(user_id=None, username="cli:tester", role="admin", auth_method="cli", client_ip=None)
