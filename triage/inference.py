"""One ONNX Runtime session per worker process, loaded lazily.

:func:`get_classifier` loads the model named by the settings (or the shipped
default) on first use in a process and keeps it; a forked child (Celery prefork)
loads its own. The providers come from the settings (empty: CUDA when present, else
CPU); the providers ONNX Runtime actually activated are logged and exposed with
:func:`active_providers`, because onnxruntime-gpu silently falls back to CPU.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from triage.errors import ModelError

__all__ = [
    "ClassifierLike",
    "active_providers",
    "clear_cache",
    "get_classifier",
    "model_path_for",
]

log = logging.getLogger(__name__)


class ClassifierLike(Protocol):
    """What the pipeline needs of a classifier (:class:`models.runtime.Classifier`)."""

    card: Any
    active_providers: list[str]
    sha256: str

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw abnormal logits ``(N,)`` for a batch ``(N, C, H, W)``."""


@dataclass
class _Cached:
    pid: int
    key: tuple[str, tuple[str, ...], int]
    classifier: Any


_lock = threading.Lock()
_cached: _Cached | None = None


def model_path_for(settings: Any) -> Path:
    """The model file the settings name, or the shipped default.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    pathlib.Path
    """
    from models.runtime import resolve_model_path

    return resolve_model_path(getattr(settings, "model_path", None))


def get_classifier(settings: Any, *, batch_size: int = 8) -> Any:
    """Return this process's classifier, loading it on first use.

    Parameters
    ----------
    settings : Settings
        ``model_path`` and ``providers`` are used.
    batch_size : int
        Largest batch per ONNX Runtime run.

    Returns
    -------
    models.runtime.Classifier

    Raises
    ------
    ModelError
        When the model or its card cannot be loaded, or the card lacks the
        configured operating point.
    """
    global _cached
    path = model_path_for(settings)
    providers = tuple(getattr(settings, "providers", None) or ())
    key = (str(path), providers, int(batch_size))
    with _lock:
        if _cached is not None and _cached.pid == os.getpid() and _cached.key == key:
            return _cached.classifier
        from models.runtime import Classifier, ModelLoadError

        try:
            classifier = Classifier.load(path, list(providers) or None, max_batch=batch_size)
        except ModelLoadError as exc:
            raise ModelError(str(exc)) from exc
        operating_point = getattr(settings, "operating_point", "balanced")
        try:
            classifier.card.threshold(operating_point)
        except KeyError as exc:
            raise ModelError(str(exc.args[0] if exc.args else exc)) from exc
        log.info(
            "worker %s: model %s %s (sha256 %s) loaded from %s; active providers %s",
            os.getpid(),
            classifier.card.name,
            classifier.card.version,
            classifier.sha256[:12],
            path,
            classifier.active_providers,
        )
        _cached = _Cached(os.getpid(), key, classifier)
        return classifier


def active_providers() -> list[str]:
    """Providers of this process's loaded session (empty when none is loaded yet).

    Returns
    -------
    list of str
    """
    cached = _cached
    if cached is None or cached.pid != os.getpid():
        return []
    return list(cached.classifier.active_providers)


def clear_cache() -> None:
    """Forget this process's classifier (tests, model reload)."""
    global _cached
    with _lock:
        _cached = None
