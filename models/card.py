"""The model card: what a model is, how to feed it and how to read its output.

The card is JSON. It travels inside the ONNX file (``metadata_props`` key
``model_card``) and beside it as ``<model>.card.json``; :func:`read_card`
prefers the embedded copy.

``sha256`` identifies the *weights*: SHA-256 over the graph initializers in
name order, each contributing ``name NUL dtype NUL shape NUL raw-bytes``
(little-endian), see :func:`weights_sha256`. It does not change when the card
or other metadata is rewritten, so it can be stored inside the file it
describes. Computing it needs the ``onnx`` package; reading a card does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.demographics import AGE_BANDS
from models.preprocess import PreprocessSpec

__all__ = [
    "ADULT_AGE",
    "CARD_KEY",
    "INTENDED_USE",
    "POPULATIONS",
    "ModelCard",
    "embed_card",
    "population_for_age",
    "read_card",
    "sidecar_path",
    "weights_sha256",
    "write_card_json",
]

logger = logging.getLogger(__name__)

#: ONNX ``metadata_props`` key holding the card JSON.
CARD_KEY = "model_card"
MANUFACTURER = "cxr-triage-node project"
#: The intended use every card of a triage model states (the default model, MedImageInsight).
INTENDED_USE = (
    "Worklist prioritisation of frontal (PA/AP) chest radiographs (CR/DX): the calibrated "
    "probability that an image is abnormal is used to move likely abnormal studies up a "
    "radiologist's reading list. Every study is still read by a radiologist; the output is not "
    "a diagnosis and must not be used to withhold or delay a read, nor on its own to treat."
)

#: Populations that may carry their own operating points.
POPULATIONS: tuple[str, str] = ("pediatric", "adult")
#: Age in years from which a patient is an adult: the upper bound of the first age band.
ADULT_AGE: float = float(AGE_BANDS[0][2])


def population_for_age(age: float | None) -> str:
    """``'pediatric'`` below :data:`ADULT_AGE` years, ``'adult'`` otherwise.

    A missing (or non-finite) age gives ``'adult'``: most radiographs a
    hospital takes are of adults.
    """
    if age is None or not np.isfinite(age) or age >= ADULT_AGE:
        return "adult"
    return "pediatric"


class ModelCard(BaseModel):
    """Model card of a Normal/Abnormal chest radiograph classifier."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    sha256: str = ""
    manufacturer: str = MANUFACTURER
    intended_use: str = ""
    intended_population: dict[str, Any] = Field(
        default_factory=dict,
        description="Who the model is for: description, age_min_years, age_max_years"
        " (models.population).",
    )
    limitations: list[str] = Field(default_factory=list)
    architecture: dict[str, Any] = Field(default_factory=dict)
    input: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=lambda: PreprocessSpec().to_dict())
    labels: list[str] = Field(default_factory=lambda: ["normal", "abnormal"])
    calibration: dict[str, Any] = Field(
        default_factory=lambda: {"method": "temperature", "temperature": 1.0}
    )
    operating_points: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: ``{"pediatric": {"balanced": {...}, ...}, "adult": {...}}``: thresholds fitted on
    #: each population's validation rows; empty when one set serves everyone.
    population_operating_points: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    subgroups: dict[str, Any] = Field(default_factory=dict)
    training_data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("preprocessing")
    @classmethod
    def _valid_preprocessing(cls, value: dict[str, Any]) -> dict[str, Any]:
        PreprocessSpec.from_dict(value)  # raises ValueError when invalid
        return value

    @field_validator("calibration")
    @classmethod
    def _valid_calibration(cls, value: dict[str, Any]) -> dict[str, Any]:
        method = value.get("method", "temperature")
        if method not in ("temperature", "none"):
            raise ValueError(f"unknown calibration method {method!r}")
        if method == "temperature" and float(value.get("temperature", 1.0)) <= 0:
            raise ValueError("temperature must be > 0")
        return value

    @field_validator("operating_points")
    @classmethod
    def _valid_points(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, point in value.items():
            thr = point.get("threshold")
            if not isinstance(thr, (int, float)) or not 0.0 <= float(thr) <= 1.0:
                raise ValueError(
                    f"operating point {name!r} needs a probability threshold in [0, 1]"
                )
        return value

    @field_validator("population_operating_points")
    @classmethod
    def _valid_population_points(
        cls, value: dict[str, dict[str, dict[str, Any]]]
    ) -> dict[str, dict[str, dict[str, Any]]]:
        for population, points in value.items():
            if population not in POPULATIONS:
                raise ValueError(f"unknown population {population!r}; known: {POPULATIONS}")
            cls._valid_points(points)
        return value

    # -- behaviour -------------------------------------------------------------
    @property
    def preprocess_spec(self) -> PreprocessSpec:
        """The card's preprocessing as a :class:`PreprocessSpec`."""
        return PreprocessSpec.from_dict(self.preprocessing)

    @property
    def temperature(self) -> float:
        """Calibration temperature (1.0 when uncalibrated)."""
        if self.calibration.get("method", "temperature") == "none":
            return 1.0
        return float(self.calibration.get("temperature", 1.0))

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated abnormal probabilities ``sigmoid(logits / T)``.

        Parameters
        ----------
        logits : numpy.ndarray
            Raw abnormal logits, any shape.

        Returns
        -------
        numpy.ndarray
            float64 probabilities of the same shape.
        """
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable sigmoid

    def threshold(self, name: str = "balanced") -> float:
        """Probability threshold (on calibrated probabilities) of an operating point.

        Raises
        ------
        KeyError
            If the card has no operating point of that name.
        """
        try:
            return float(self.operating_points[name]["threshold"])
        except KeyError:
            known = sorted(self.operating_points)
            raise KeyError(f"model card has no operating point {name!r}; known: {known}") from None

    def operating_point_for(self, age: float | None, name: str = "balanced") -> tuple[str, float]:
        """The population and threshold of operating point ``name`` for a patient's age.

        Uses the population's own point when the card carries one
        (:attr:`population_operating_points`), else the card-wide point.

        Parameters
        ----------
        age : float or None
            Age in years; None when the header gives none (adult point).
        name : str
            Operating point name.

        Returns
        -------
        population : str
            ``'pediatric'`` or ``'adult'``, or ``'all'`` when the card-wide point was used.
        threshold : float
            Probability threshold.
        """
        population = population_for_age(age)
        point = self.population_operating_points.get(population, {}).get(name)
        if point is not None:
            return population, float(point["threshold"])
        return "all", self.threshold(name)

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse JSON written by :meth:`to_json`."""
        return cls.model_validate(json.loads(text))


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.card.json``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")


def write_card_json(path: str | Path, card: ModelCard) -> Path:
    """Write the card as JSON to ``path`` (atomically) and return the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card.to_json() + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def weights_sha256(model: Any) -> str:
    """SHA-256 of the graph initializers of an ONNX model (path or ModelProto).

    Requires the ``onnx`` package.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    h = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(init.name.encode())
        h.update(
            b"\0" + str(arr.dtype.str).encode() + b"\0" + str(list(arr.shape)).encode() + b"\0"
        )
        h.update(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def embed_card(onnx_path: str | Path, card: ModelCard, *, sidecar: bool = True) -> ModelCard:
    """Store the card in the ONNX file's metadata (and the sidecar JSON).

    ``card.sha256`` is (re)computed from the file's weights. Other metadata
    entries are kept. Requires the ``onnx`` package.

    Returns
    -------
    ModelCard
        The card as written (with ``sha256`` filled in).
    """
    import onnx

    onnx_path = Path(onnx_path)
    proto = onnx.load(str(onnx_path))
    card = card.model_copy(update={"sha256": weights_sha256(proto)})
    keep = [p for p in proto.metadata_props if p.key not in (CARD_KEY, "name", "version", "sha256")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in (
        (CARD_KEY, card.to_json()),
        ("name", card.name),
        ("version", card.version),
        ("sha256", card.sha256),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = proto.producer_name or MANUFACTURER
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(onnx_path)
    if sidecar:
        write_card_json(sidecar_path(onnx_path), card)
    return card


def read_card(onnx_path: str | Path) -> ModelCard:
    """Read the card of an ONNX model.

    Looks in the ONNX metadata first (through onnxruntime, or onnx when that
    is missing), then in ``<model>.card.json``.

    Raises
    ------
    FileNotFoundError
        When neither the embedded card nor the sidecar exists.
    """
    onnx_path = Path(onnx_path)
    text = _embedded_card_text(onnx_path)
    if text is not None:
        return ModelCard.from_json(text)
    side = sidecar_path(onnx_path)
    if side.exists():
        return ModelCard.from_json(side.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"no model card in {onnx_path} metadata and no {side.name}")


def _embedded_card_text(onnx_path: Path) -> str | None:
    if not onnx_path.exists():
        return None
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        return sess.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; fall back to the sidecar
        logger.warning("cannot read metadata of %s with onnxruntime: %s", onnx_path, exc)
        return None
    try:
        import onnx

        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors; fall back to the sidecar
        logger.warning("cannot read metadata of %s: %s", onnx_path, exc)
        return None
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            return prop.value
    return None
