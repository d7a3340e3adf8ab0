"""One ONNX Runtime session per worker process, loaded lazily.

:func:`get_classifier` loads the model named by the settings (or the shipped
default) on first use in a process and keeps it; a forked child (Celery prefork)
loads its own. The providers come from the settings (empty: CUDA when present, else
CPU); the providers ONNX Runtime actually activated are logged, because
onnxruntime-gpu silently falls back to CPU.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.runtime import CPU, Classifier, ModelLoadError, resolve_model_path
from triage.errors import ModelError
from worklist.core.settings import Settings

__all__ = ["GPU_BATCH_STUDIES", "batch_studies_for", "get_classifier", "model_path_for"]

#: Study revisions an inference task triages together on a GPU, by default.
GPU_BATCH_STUDIES = 8

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    pid: int
    key: tuple[str, tuple[str, ...], int, int]
    classifier: Classifier


_lock = threading.Lock()
_cached: _Cached | None = None


def model_path_for(settings: Settings) -> Path:
    """The model file the settings name, or the shipped default.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    pathlib.Path
    """
    return resolve_model_path(settings.model_path)


def get_classifier(settings: Settings, *, batch_size: int = 8) -> Classifier:
    """Return this process's classifier, loading it on first use.

    Parameters
    ----------
    settings : Settings
        ``model_path``, ``providers`` and ``inference_threads`` are used.
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
    providers = tuple(settings.providers)
    threads = int(settings.inference_threads)
    key = (str(path), providers, int(batch_size), threads)
    with _lock:
        if _cached is not None and _cached.pid == os.getpid() and _cached.key == key:
            return _cached.classifier
        try:
            classifier = Classifier.load(
                path,
                list(providers) or None,
                max_batch=batch_size,
                intra_op_threads=threads or None,
            )
        except ModelLoadError as exc:
            raise ModelError(str(exc)) from exc
        operating_point = settings.operating_point
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


def batch_studies_for(setting: int | None, providers: Sequence[str]) -> int:
    """How many study revisions an inference task triages together.

    Parameters
    ----------
    setting : int or None
        ``inference_batch_studies``; None chooses by the providers.
    providers : sequence of str
        The model's ONNX Runtime providers, first preferred (active ones when loaded).

    Returns
    -------
    int
        The setting when given; else :data:`GPU_BATCH_STUDIES` when the model runs on
        an accelerator (one call for many images is what makes it cheap there), 1 on
        the CPU (where a batch only delays its first SR: ``bench/TRIAGE.md``).
    """
    if setting is not None:
        return setting
    return GPU_BATCH_STUDIES if providers and providers[0] != CPU else 1
