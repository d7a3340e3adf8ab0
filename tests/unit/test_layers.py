"""The import layers: triage -> dicom_scp -> worklist -> models, and no import circle.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``): import-linter
checks them on the import graph, imports inside functions included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")
pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[2]
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(no_cache=True, no_logo=True))"
)


def test_import_contracts_are_kept() -> None:
    """Both contracts are declared and kept (the output names any broken import)."""
    out = subprocess.run(
        [sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    report = out.stdout + out.stderr
    assert "Layers: triage -> dicom_scp -> worklist -> models KEPT" in report, report
    assert "No import circle KEPT" in report, report
    assert out.returncode == 0, report


def test_the_core_imports_nothing_else_from_worklist(monkeypatch: pytest.MonkeyPatch) -> None:
    """``worklist.core`` is the ground floor: settings, logs, clock, db and contracts."""
    monkeypatch.syspath_prepend(str(ROOT))
    graph = grimp.build_graph("worklist")
    core = graph.find_descendants("worklist.core") | {"worklist.core"}
    above = {
        (module, imported)
        for module in core
        for imported in graph.find_modules_directly_imported_by(module)
        if imported not in core and imported != "worklist"
    }
    assert not above, sorted(above)
