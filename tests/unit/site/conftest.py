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

    return Actor(
        user_id=None, username="cli:tester", role="admin", auth_method="cli", client_ip=None
    )


def synthetic_dx(
    path: Path,
    *,
    brightness: float,
    patient_id: str,
    patient_name: str,
    sex: str = "F",
    age: str = "045Y",
    view: str = "PA",
    seed: int = 0,
) -> Path:
    """Write a DX file with a share ``brightness`` (0-1) of bright pixels."""
    import numpy as np
    from PIL import Image

    from tests.support.dx import wrap_image_as_dx

    rng = np.random.default_rng(seed)
    # A share ``brightness`` of bright pixels: after the percentile window the tiny
    # model's logit is about weight x (brightness - 0.5) / 0.25.
    bright = rng.random((96, 96)) < brightness
    pixels = np.clip(np.where(bright, 220, 30) + rng.normal(0, 5, (96, 96)), 0, 255)
    pixels = pixels.astype(np.uint8)
    png = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(png)
    ds = wrap_image_as_dx(png, patient_id=patient_id, patient_name=patient_name, view_position=view)
    ds.PatientSex = sex
    ds.PatientAge = age
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    png.unlink()
    return path


class Site:
    """A small site in a test database: studies triaged by the real pipeline, labelled."""

    def __init__(self, session_factory, tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
        self.session_factory = session_factory
        self.tmp_path = tmp_path
        self.settings = settings
        self.n = 0
        self._user_id: int | None = None

    def study(self, *, label: str | None, classifier, **dx: object) -> int:  # type: ignore[no-untyped-def]
        """Receive, triage (with ``classifier``) and label one study; its id."""
        from tests.support.ingest import ingest_file
        from tests.unit.triage.conftest import make_stable
        from triage.pipeline import triage_study

        self.n += 1
        dx.setdefault("patient_id", f"MRN{self.n:05d}")
        dx.setdefault("patient_name", f"Doe^Jane{self.n}")
        dx.setdefault("brightness", 0.7 if label == "abnormal" else 0.3)
        path = synthetic_dx(self.tmp_path / "in" / f"{self.n}.dcm", seed=self.n, **dx)  # type: ignore[arg-type]
        study_id = ingest_file(self.session_factory, path, self.tmp_path / "spool")
        (handoff,) = [h for h in make_stable(self.session_factory) if h.study_id == study_id]
        triage_study(self.session_factory, self.settings, classifier, study_id, handoff.revision)
        if label is not None:
            self.label(study_id, label)
        return study_id

    def label(self, study_id: int, label: str) -> None:
        """Give a radiologist's label to a study."""
        from worklist import accounts, reading
        from worklist.tables import Study, User

        with self.session_factory.begin() as session:
            if self._user_id is None:
                user = accounts.create_user(
                    session, username="rad1", password="a-long-password-1", role="radiologist"
                )
                self._user_id = user.id
            user = session.get(User, self._user_id)
            reading.give_feedback(
                session, study=session.get(Study, study_id), user=user, label=label
            )


@pytest.fixture
def site_settings(tmp_path: Path, make_model):  # type: ignore[no-untyped-def]
    """Settings of a test node: a tiny configured model and a pseudonymisation key."""
    from worklist.core.settings import load_settings

    return load_settings(
        data_dir=tmp_path / "data",
        model_path=make_model("configured", weight=4.0),
        pseudonym_key="0123456789abcdef-test-key",
    )


@pytest.fixture
def site(session_factory, tmp_path: Path, site_settings) -> Site:  # type: ignore[no-untyped-def]
    """A :class:`Site` over the test database."""
    return Site(session_factory, tmp_path, site_settings)


@pytest.fixture
def tiny_classifier(site_settings):  # type: ignore[no-untyped-def]
    """The configured tiny model, loaded (logit = 4 x mean of the preprocessed image)."""
    from models.runtime import Classifier

    return Classifier.load(site_settings.model_path)
