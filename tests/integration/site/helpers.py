"""Running ``triage-node`` commands against a test node's settings."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.conftest import environment_without_settings

__all__ = ["node_cli"]


def node_cli(settings: Any, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``triage-node ARGS`` with ``settings`` as its environment (output captured)."""
    from triage.worker import settings_to_env

    env = environment_without_settings()
    env.update(settings_to_env(settings))
    return subprocess.run(
        [sys.executable, "-m", "triage.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
