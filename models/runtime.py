"""ONNX Runtime inference for the triage workers (onnxruntime + numpy, no torch).

Usage::

    clf = Classifier.load(default_model_path())
    x = np.stack([preprocess_file(p, clf.card.preprocess_spec) for p in paths])
    prob = clf.predict_proba(x)
    abnormal = prob >= clf.card.threshold("balanced")
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.cam_output import CAM_OUTPUT
from models.card import CARD_KEY, ModelCard, read_card, sidecar_path

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Classifier",
    "ModelLoadError",
    "choose_providers",
    "default_model_path",
]

logger = logging.getLogger(__name__)

#: File stem of the shipped model under ``models/default/``.
DEFAULT_MODEL_NAME = "cxr-triage-default"

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class ModelLoadError(Exception):
    """The model file is missing, unreadable, or its card does not match it."""


def default_model_path() -> Path:
    """Path of the shipped default model (``models/default/cxr-triage-default.onnx``)."""
    return Path(__file__).resolve().parent / "default" / f"{DEFAULT_MODEL_NAME}.onnx"


def resolve_model_path(path: str | Path | None) -> Path:
    """The configured model file, or the shipped default when none is configured.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        The configured ``.onnx`` file (``TRIAGE_MODEL_PATH``).

    Returns
    -------
    pathlib.Path
    """
    return Path(path) if path else default_model_path()


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """ONNX Runtime execution providers to ask for, in order.

    Parameters
    ----------
    requested : list of str, optional
        Wanted providers in order of preference (e.g. ``["TensorrtExecutionProvider",
        "CUDAExecutionProvider", "CPUExecutionProvider"]``). Unavailable ones
        are dropped with a warning. ``None`` means CUDA then CPU when CUDA is
        available, else CPU.

    Returns
    -------
    list of str
        Always ends with ``CPUExecutionProvider``.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if requested is None:
        chosen = [CUDA, CPU] if CUDA in available else [CPU]
    else:
        chosen = []
        for name in requested:
            if name in available:
                if name not in chosen:
                    chosen.append(name)
            else:
                logger.warning(
                    "ONNX Runtime provider %s is not available (have %s)", name, sorted(available)
                )
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Classifier:
    """An ONNX Normal/Abnormal classifier with its model card.

    Build with :meth:`load`. One instance per worker process; the underlying
    :class:`onnxruntime.InferenceSession` is thread-safe for ``run``.

    Attributes
    ----------
    card : ModelCard
    path : pathlib.Path
    active_providers : list of str
        Providers the session actually uses (``session.get_providers()``).
    sha256 : str
        Weights hash from the model card (the provenance recorded in results).
    file_sha256 : str
        SHA-256 of the ONNX file bytes.
    max_batch : int
        Larger batches are split into runs of at most this many images.
    has_cam : bool
        The card declares a class-activation-map output (``outputs.cam``,
        :mod:`models.cam_output`): :meth:`predict_with_cam` gives it with the logits.
    """

    def __init__(self, session: Any, card: ModelCard, path: Path, max_batch: int = 32) -> None:
        self.session = session
        self.card = card
        self.path = path
        self.max_batch = int(max_batch)
        self.active_providers: list[str] = list(session.get_providers())
        self.sha256: str = card.sha256
        self.file_sha256: str = _file_sha256(path)
        outputs = [o.name for o in session.get_outputs()]
        if "logits" not in outputs:
            raise ModelLoadError(f"{path.name}: ONNX model has no 'logits' output (has {outputs})")
        self._has_embedding = "embedding" in outputs
        self.has_cam = CAM_OUTPUT in card.outputs
        if self.has_cam and CAM_OUTPUT not in outputs:
            raise ModelLoadError(
                f"{path.name}: the card declares a {CAM_OUTPUT!r} output the graph lacks"
            )
        inputs = session.get_inputs()
        if not inputs or inputs[0].name != "image":
            raise ModelLoadError(f"{path.name}: ONNX model input must be named 'image'")
        self.input_name = "image"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        providers: list[str] | None = None,
        *,
        max_batch: int = 32,
        intra_op_threads: int | None = None,
    ) -> Classifier:
        """Open an ONNX model and its card.

        Parameters
        ----------
        path : str or pathlib.Path, optional
            The ``.onnx`` file; the shipped default when None.
        providers : list of str, optional
            See :func:`choose_providers`.
        max_batch : int
            Largest batch given to one ``session.run``.
        intra_op_threads : int, optional
            ONNX Runtime intra-op thread count (default: ONNX Runtime's choice).

        Raises
        ------
        ModelLoadError
            If the model or its card cannot be loaded.
        """
        import onnxruntime as ort

        path = resolve_model_path(path)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        wanted = choose_providers(providers)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        try:
            session = ort.InferenceSession(str(path), opts, providers=wanted)
        except Exception as exc:
            raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
        active = session.get_providers()
        for name in wanted:
            if name != CPU and name not in active:
                logger.warning(
                    "requested ONNX Runtime provider %s is not active for %s (running on %s); "
                    "inference falls back to CPU",
                    name,
                    path.name,
                    active,
                )
        text = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
        try:
            card = ModelCard.from_json(text) if text else read_card(path)
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from exc
        except ValueError as exc:
            raise ModelLoadError(f"invalid model card for {path.name}: {exc}") from exc
        if not text:
            logger.info("model card of %s read from %s", path.name, sidecar_path(path).name)
        clf = cls(session, card, path, max_batch=max_batch)
        logger.info(
            "loaded model %s %s (sha256 %s) on %s",
            card.name,
            card.version,
            card.sha256[:12],
            active,
        )
        return clf

    # ------------------------------------------------------------------------
    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        expected = tuple(self.card.preprocess_spec.shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"batch must have shape (N, {', '.join(map(str, expected))}), got {x.shape}"
            )
        return np.ascontiguousarray(x)

    def _run(self, batch: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        x = self._check_batch(batch)
        if len(x) == 0:
            return [
                np.zeros((0,), np.float32) if o == "logits" else np.zeros((0, 0), np.float32)
                for o in outputs
            ]
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        for start in range(0, len(x), self.max_batch):
            res = self.session.run(outputs, {self.input_name: x[start : start + self.max_batch]})
            for i, r in enumerate(res):
                parts[i].append(r)
        return [np.concatenate(p, axis=0) for p in parts]

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw abnormal logits, shape ``(N,)``, for preprocessed images ``(N, C, H, W)``."""
        (logits,) = self._run(batch, ["logits"])
        return logits.reshape(len(logits), -1)[:, -1].astype(np.float32) if logits.size else logits

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated abnormal probabilities, shape ``(N,)``."""
        return self.card.calibrate(self.predict_logits(batch))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Pooled embeddings, shape ``(N, D)``.

        Raises
        ------
        ValueError
            If the model has no 'embedding' output.
        """
        if not self._has_embedding:
            raise ValueError(f"{self.path.name} has no 'embedding' output")
        (emb,) = self._run(batch, ["embedding"])
        return emb

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings in one run: ``((N,), (N, D))``."""
        if not self._has_embedding:
            logits = self.predict_logits(batch)
            return logits, np.zeros((len(logits), 0), np.float32)
        logits, emb = self._run(batch, ["logits", "embedding"])
        return logits.reshape(len(logits), -1)[:, -1], emb

    def predict_with_cam(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and class-activation maps in one run: ``((N,), (N, h, w))``.

        Raises
        ------
        ValueError
            If the card declares no ``cam`` output.
        """
        if not self.has_cam:
            raise ValueError(f"{self.path.name} has no {CAM_OUTPUT!r} output")
        logits, cam = self._run(batch, ["logits", CAM_OUTPUT])
        if not logits.size:
            return logits, np.zeros((0, 0, 0), np.float32)
        return logits.reshape(len(logits), -1)[:, -1].astype(np.float32), cam
