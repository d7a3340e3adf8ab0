"""Helpers shared by the deployment tests: paths, YAML, compose interpolation, settings."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = REPO_ROOT / "Dockerfile"

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def find_tool(name: str) -> str | None:
    """Find an executable on PATH or next to the running Python (the venv's bin).

    Parameters
    ----------
    name : str
        Executable name.

    Returns
    -------
    str or None
        Its path, or None when absent.
    """
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Apply compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` recursively.

    Parameters
    ----------
    value : Any
        A value loaded from a compose file.
    env : mapping of str to str
        The variables.

    Returns
    -------
    Any
        The value with every string interpolated.

    Raises
    ------
    KeyError
        For ``${VAR:?error}`` (or ``${VAR?error}``) when the variable is unset or empty.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def _one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in (":-", "-"):
            empty = current is None or (op == ":-" and current == "")
            return arg if empty else str(current)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"{name}: {arg}")
            return str(current)
        return "" if current is None else str(current)

    return _INTERPOLATION.sub(_one, value)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Load every non-empty YAML document of a file.

    Parameters
    ----------
    path : Path

    Returns
    -------
    list of dict
    """
    import yaml

    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Any:
    """Build the node's settings from ``env`` the way a container would.

    Parameters
    ----------
    monkeypatch : pytest.MonkeyPatch
        Restores the environment afterwards.
    env : mapping of str to str
        Variables of the container (only ``TRIAGE_*`` ones are used).

    Returns
    -------
    worklist.core.settings.Settings
    """
    from worklist.core.settings import load_settings

    for key in list(os.environ):
        if key.startswith("TRIAGE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("TRIAGE_"):
            monkeypatch.setenv(key, str(value))
    return load_settings()


def cli_accepts(argv: list[str]) -> bool:
    """Tell whether ``triage-node`` parses ``argv`` (without running anything).

    Parameters
    ----------
    argv : list of str

    Returns
    -------
    bool
    """
    from triage.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True
