"""The registry's models in a worker process: the champion and the shadows, loaded once.

:class:`RegistryModels` reads the registry (:func:`worklist.model_registry.active_models`,
one small query) each time the worker asks (before each task) and loads a model only
when its weights hash is not loaded yet, so a promotion or a new shadow model reaches
every worker at its next task, without a restart. With an empty registry the
configured model is registered as champion first.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from models.runtime import Classifier, ModelLoadError
from triage.errors import ModelError
from triage.inference import model_path_for
from worklist.core.settings import Settings
from worklist.model_registry import (
    ActiveModel,
    RegistryError,
    active_models,
    ensure_champion,
    refresh_champion_copy,
)

__all__ = ["LoadedModel", "RegistryModels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A registered model and its classifier.

    Attributes
    ----------
    entry : ActiveModel
    classifier : models.runtime.Classifier
    """

    entry: ActiveModel
    classifier: Classifier


class RegistryModels:
    """This process's champion and shadow classifiers, kept in step with the registry.

    Parameters
    ----------
    settings : Settings
        ``model_path``, ``providers``, ``operating_point`` and ``data_dir`` are used.
    batch_size : int
    """

    def __init__(self, settings: Settings, batch_size: int = 8) -> None:
        self.settings = settings
        self.batch_size = int(batch_size)
        self._threads = int(settings.inference_threads) or None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._copy_checked = False
        self._loaded: dict[str, Classifier] = {}
        self.champion: LoadedModel | None = None
        self.shadows: list[LoadedModel] = []

    def _load(self, entry: ActiveModel) -> Classifier:
        classifier = self._loaded.get(entry.sha256)
        if classifier is not None:
            return classifier
        providers = list(self.settings.providers) or None
        try:
            classifier = Classifier.load(
                entry.path, providers, max_batch=self.batch_size, intra_op_threads=self._threads
            )
        except ModelLoadError as exc:
            raise ModelError(f"registered model {entry.name}: {exc}") from exc
        if classifier.sha256 != entry.sha256:
            raise ModelError(
                f"registered model {entry.name}: file {entry.path} has weights "
                f"{classifier.sha256[:12]}, the registry says {entry.sha256[:12]}"
            )
        log.info(
            "worker %s: %s model %s %s (sha256 %s) loaded; active providers %s",
            os.getpid(),
            entry.role,
            entry.name,
            entry.version,
            entry.sha256[:12],
            classifier.active_providers,
        )
        self._loaded[entry.sha256] = classifier
        return classifier

    def _unregistered_champion(self) -> ActiveModel:
        """The configured model as champion without a registry row (id 0): used only
        while it cannot be copied into the registry, e.g. on a full disk."""
        path = model_path_for(self.settings)
        providers = list(self.settings.providers) or None
        try:
            classifier = Classifier.load(
                path, providers, max_batch=self.batch_size, intra_op_threads=self._threads
            )
        except ModelLoadError as exc:
            raise ModelError(f"configured model: {exc}") from exc
        card = classifier.card
        entry = ActiveModel(0, card.name, card.version, classifier.sha256, str(path), "champion")
        self._loaded.setdefault(entry.sha256, classifier)
        return entry

    def refresh(self, session_factory: sessionmaker[Session]) -> LoadedModel:
        """Read the registry and load what changed; return the champion.

        Parameters
        ----------
        session_factory : sessionmaker

        Returns
        -------
        LoadedModel
            The champion.

        Raises
        ------
        ModelError
            When a registered model cannot be loaded.

        Notes
        -----
        When the configured model cannot be registered (an ``OSError`` while it is
        copied, e.g. a full disk), it decides unregistered and registration is tried
        again at the next task.
        """
        if not self._copy_checked:  # once a process: an upgraded node's new export
            self._copy_checked = True
            try:
                refresh_champion_copy(
                    session_factory,
                    path=model_path_for(self.settings),
                    operating_point=self.settings.operating_point,
                )
            except (RegistryError, OSError) as exc:
                log.warning("the registry copy of the champion was not refreshed: %s", exc)
        with session_factory() as session:
            champion, shadows = active_models(session)
        if champion is None:
            try:
                champion = ensure_champion(
                    session_factory,
                    path=model_path_for(self.settings),
                    models_dir=self.settings.data_dir / "models",
                    operating_point=self.settings.operating_point,
                )
            except OSError as exc:  # e.g. a full disk: triage goes on, registration waits
                log.warning(
                    "the configured model could not be registered (%s); it triages"
                    " unregistered until it can be",
                    exc,
                )
                champion = self._unregistered_champion()
        with self._lock:
            if self._pid != os.getpid():  # a forked child loads its own sessions
                self._pid, self._loaded = os.getpid(), {}
            if self.champion is not None and self.champion.entry.sha256 != champion.sha256:
                log.info(
                    "worker %s: champion is now %s (sha256 %s), was %s",
                    os.getpid(),
                    champion.name,
                    champion.sha256[:12],
                    self.champion.entry.name,
                )
            self.champion = LoadedModel(champion, self._load(champion))
            self.shadows = []
            for shadow in shadows:
                try:
                    self.shadows.append(LoadedModel(shadow, self._load(shadow)))
                except ModelError as exc:  # a broken shadow never holds back the champion
                    log.error("shadow model %s not loaded: %s", shadow.name, exc)
            wanted = {champion.sha256, *(s.sha256 for s in shadows)}
            for sha in list(self._loaded):
                if sha not in wanted:
                    del self._loaded[sha]
            return self.champion
