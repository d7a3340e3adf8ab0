"""``triage-node config``: every setting with its effective value, variable and meaning.

Effective means what the node will actually use: the SQLite file when no database URL
is set, the model file when none is set (the shipped default), the ONNX Runtime
providers that are active once the model is loaded. Secrets are masked: a
``SecretStr`` shows only whether it is set, and a password inside a URL is replaced by
``***``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import SecretStr

from worklist.core.settings import Settings

__all__ = ["ConfigRow", "config_rows", "format_config", "mask_url"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)", re.I)


@dataclass(frozen=True)
class ConfigRow:
    """One setting as ``triage-node config`` shows it.

    Attributes
    ----------
    variable : str
        ``TRIAGE_<FIELD>``.
    value : str
        The effective value, secrets masked.
    source : str
        ``environment``, ``file`` (or an override) or ``default``.
    meaning : str
        The field's one-line description.
    """

    variable: str
    value: str
    source: str
    meaning: str


def mask_url(url: str) -> str:
    """``postgresql://triage:s3cret@db/triage`` -> ``postgresql://triage:***@db/triage``."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + "***" + m["tail"], url)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _effective(settings: Settings, name: str, model: Any) -> str:
    """The value the node will use for one field (derived where the field is empty)."""
    value = getattr(settings, name)
    if isinstance(value, SecretStr):
        if value.get_secret_value():
            return "******** (set)"
        if name == "session_secret":
            return "(not set: a random key per process)"
        return "(not set)"
    if name == "data_dir":
        return str(settings.data_dir.resolve())
    if name == "database_url":
        return mask_url(settings.effective_database_url)
    if name == "broker_url":
        return mask_url(settings.effective_broker_url)
    if name == "model_path":
        return model.get("path") or _text(value)
    if name == "providers":
        if model.get("providers"):
            return ",".join(model["providers"]) + " (active)"
        return _text(value) or "CUDA if present, else CPU"
    if name == "inference_batch_studies" and value is None:
        from models.runtime import choose_providers
        from triage.inference import batch_studies_for

        providers = model.get("providers") or choose_providers(list(settings.providers) or None)
        return f"{batch_studies_for(None, providers)} (auto: 8 on a GPU, 1 on CPU)"
    if name == "destinations":
        return _text(value) or "(none)"
    if name in ("allowed_calling_aes", "allowed_peers"):
        return _text(value) or "(any)"
    return _text(value)


def _model_facts(settings: Settings) -> dict[str, Any]:
    """Path and active providers of the configured model (or why it cannot load)."""
    from models.runtime import ModelLoadError, resolve_model_path
    from triage.startup import model_summary

    path = str(resolve_model_path(settings.model_path).resolve())
    try:
        summary = model_summary(settings)
    except ModelLoadError as exc:
        return {"path": f"{path} (CANNOT LOAD: {exc})", "providers": []}
    return {
        "path": f"{path} ({summary.name} {summary.version}, sha256 {summary.sha256[:12]})",
        "providers": summary.providers,
    }


def config_rows(settings: Settings, *, load_model: bool = True) -> list[ConfigRow]:
    """Every setting of :class:`Settings` with its effective value.

    Parameters
    ----------
    settings : Settings
    load_model : bool
        Load the model to name its file and the providers that are active.

    Returns
    -------
    list of ConfigRow
        In the order of the Settings fields.
    """
    model = _model_facts(settings) if load_model else {}
    rows = []
    for name, field in type(settings).model_fields.items():
        variable = f"TRIAGE_{name.upper()}"
        if variable in os.environ:
            source = "environment"
        elif name in settings.model_fields_set:
            source = "file"
        else:
            source = "default"
        meaning = " ".join((field.description or "").split())
        value = _effective(settings, name, model) or "(not set)"
        rows.append(ConfigRow(variable, value, source, meaning))
    return rows


def format_config(rows: list[ConfigRow], *, as_json: bool = False) -> str:
    """The rows as an aligned text table, or as JSON.

    Parameters
    ----------
    rows : list of ConfigRow
    as_json : bool

    Returns
    -------
    str
    """
    if as_json:
        return json.dumps([asdict(r) for r in rows], indent=2)
    width = max(len(r.variable) for r in rows)
    lines = [
        "Effective settings (environment > config file > default); secrets masked.",
        "",
    ]
    for r in rows:
        lines.append(f"{r.variable:<{width}}  {r.value}")
        lines.append(f"{'':<{width}}  {r.meaning} [{r.source}]")
    return "\n".join(lines)
