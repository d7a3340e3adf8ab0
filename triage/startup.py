"""What the node says when it starts: the model it runs and whether each destination answers.

One line names the model (name, version, weights sha256, the ONNX Runtime providers
that are actually active, the operating point and its threshold); one line per
destination gives the result of a C-ECHO to it. The same facts are what
``triage-node config`` shows as effective values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worklist.core.settings import Destination, Settings

__all__ = ["ModelSummary", "echo_line", "model_line", "model_summary", "startup_lines"]

#: Seconds a C-ECHO to a destination may take at start-up.
ECHO_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ModelSummary:
    """The model the workers will load, as loaded here with the same settings.

    Attributes
    ----------
    path : str
    name, version, sha256 : str
    providers : list of str
        The providers ONNX Runtime actually activated (CPU when CUDA fell back).
    operating_point : str
    threshold : float or None
        None when the card has no such operating point.
    """

    path: str
    name: str
    version: str
    sha256: str
    providers: list[str]
    operating_point: str
    threshold: float | None


def model_summary(settings: Settings) -> ModelSummary:
    """Load the configured model once and say what it is and where it runs.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    ModelSummary

    Raises
    ------
    models.runtime.ModelLoadError
        When the model cannot be loaded.
    """
    from models.runtime import Classifier

    runtime_log = logging.getLogger("models.runtime")
    previous = runtime_log.level
    runtime_log.setLevel(logging.WARNING)  # its own "loaded model" line would repeat ours
    try:
        clf = Classifier.load(settings.model_path, settings.providers or None)
    finally:
        runtime_log.setLevel(previous)
    point = clf.card.operating_points.get(settings.operating_point) or {}
    threshold = point.get("threshold")
    return ModelSummary(
        path=str(clf.path),
        name=clf.card.name,
        version=clf.card.version,
        sha256=clf.card.sha256,
        providers=list(clf.active_providers),
        operating_point=settings.operating_point,
        threshold=float(threshold) if threshold is not None else None,
    )


def model_line(settings: Settings) -> str:
    """One line naming the model, or saying why it cannot be loaded.

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    str
    """
    from models.runtime import ModelLoadError

    try:
        m = model_summary(settings)
    except ModelLoadError as exc:
        return f"model: CANNOT LOAD: {exc}"
    point = m.operating_point + (
        f" (threshold {m.threshold:.3f})" if m.threshold is not None else " (NOT IN THE MODEL CARD)"
    )
    return (
        f"model: {m.name} {m.version}, sha256 {m.sha256[:12]}, providers {','.join(m.providers)},"
        f" operating point {point}"
    )


def echo_line(destination: Destination, calling_ae: str, timeout: float = ECHO_TIMEOUT_S) -> str:
    """C-ECHO a destination and say how it went, in one line.

    Parameters
    ----------
    destination : Destination
    calling_ae : str
        The node's AE title.
    timeout : float
        Seconds for the association and the answer.

    Returns
    -------
    str
        ``destination PACS@10.0.0.5:104: C-ECHO ok`` or ``... C-ECHO FAILED: <why>``.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    prefix = f"destination {destination}: C-ECHO"
    transport_log = logging.getLogger("pynetdicom")
    previous = transport_log.level
    transport_log.setLevel(logging.CRITICAL)  # this line says why; no ERROR lines before it
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    finally:
        transport_log.setLevel(previous)
    try:
        if assoc.is_rejected:
            return f"{prefix} FAILED: association rejected (is {calling_ae} known to it?)"
        if not assoc.is_established:
            return f"{prefix} FAILED: no association (not listening, or unreachable)"
        status = assoc.send_c_echo()
        if status and status.get("Status") == 0:
            return f"{prefix} ok"
        code = status.get("Status") if status else None
        return (
            f"{prefix} FAILED: status {code:#06x}"
            if code is not None
            else (f"{prefix} FAILED: no answer")
        )
    finally:
        if assoc.is_established:
            assoc.release()


def startup_lines(settings: Settings) -> list[str]:
    """The model line, then one line per destination (or that there is none).

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    list of str
    """
    lines = [model_line(settings)]
    if not settings.destinations:
        lines.append("destinations: none (results stay on the node; set TRIAGE_DESTINATIONS)")
    for destination in settings.destinations:
        lines.append(echo_line(destination, settings.ae_title))
    return lines
