"""The DICOM Conformance Statement says exactly what the node does.

The SOP-class and transfer-syntax tables of ``docs/conformance-statement.md`` are
parsed and compared with what the SCP offers (``dicom_scp.contexts``); the C-STORE
status table with ``dicom_scp.status.StoreStatus``; the SOP classes sent (SR, heatmap
Secondary Capture) with the classes the triage worker builds. The generated tables
must also be exactly what ``deploy/conformance_tables.py`` prints, so regenerating them
is one command.
"""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType
from typing import Any

import pytest

from tests.unit.deploy.support import DEPLOY, REPO_ROOT

DOCUMENT = REPO_ROOT / "docs" / "conformance-statement.md"
_UID = re.compile(r"\|\s*(1\.2\.840\.10008(?:\.\d+)+)\s*\|")


@pytest.fixture(scope="module")
def contexts() -> ModuleType:
    try:
        from dicom_scp import contexts
    except ImportError as exc:
        pytest.skip(f"dicom_scp.contexts is not importable ({exc}); nothing to compare with")
    return contexts


@pytest.fixture(scope="module")
def tables_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "conformance_tables", DEPLOY / "conformance_tables.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def _table_after(document: str, caption: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``caption``."""
    start = document.index(caption)
    rows: list[list[str]] = []
    for line in document[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def _uids(section: str) -> list[str]:
    return [m[1] for m in _UID.finditer(section)]


def test_storage_sop_classes_are_exactly_those_offered(document, tables_module, contexts) -> None:
    sections = tables_module.generated_sections(document)
    listed = _uids(sections["storage-sop-classes"])
    offered = [str(uid) for uid in contexts.storage_sop_classes()]
    assert len(listed) == len(set(listed)), "a SOP class is listed twice"
    assert set(listed) == set(offered)
    assert f"({len(offered)} classes" in document, "the overview's count is stale"


def test_storage_sop_classes_are_pynetdicoms(document, tables_module) -> None:
    from pynetdicom.sop_class import _STORAGE_CLASSES

    listed = set(_uids(tables_module.generated_sections(document)["storage-sop-classes"]))
    assert listed == {str(uid) for uid in _STORAGE_CLASSES.values()}


def test_transfer_syntaxes_are_exactly_those_accepted(document, tables_module, contexts) -> None:
    sections = tables_module.generated_sections(document)
    assert _uids(sections["storage-transfer-syntaxes"]) == [
        str(uid) for uid in contexts.SUPPORTED_TRANSFER_SYNTAXES
    ]
    assert _uids(sections["verification-transfer-syntaxes"]) == [
        str(uid) for uid in contexts.VERIFICATION_TRANSFER_SYNTAXES
    ]


def test_the_supported_contexts_are_what_the_tables_say(document, tables_module, contexts) -> None:
    """The contexts the AE is built with, not only the module's constants."""
    sections = tables_module.generated_sections(document)
    storage_ts = set(_uids(sections["storage-transfer-syntaxes"]))
    verification_ts = set(_uids(sections["verification-transfer-syntaxes"]))
    verification = _table_after(document, "**Table 2.2-1. Verification SOP class**")
    assert [row[1] for row in verification] == ["1.2.840.10008.1.1"]
    by_class = {
        str(c.abstract_syntax): {str(ts) for ts in c.transfer_syntax}
        for c in contexts.supported_contexts()
    }
    assert by_class.pop("1.2.840.10008.1.1") == verification_ts
    assert set(by_class) == set(_uids(sections["storage-sop-classes"]))
    assert all(syntaxes == storage_ts for syntaxes in by_class.values())


def test_the_named_transfer_syntaxes_are_all_there(document, tables_module) -> None:
    listed = set(_uids(tables_module.generated_sections(document)["storage-transfer-syntaxes"]))
    required = {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    }
    assert listed == required


def test_generated_tables_are_current(document, tables_module, contexts) -> None:
    sections = tables_module.generated_sections(document)
    generated = tables_module.generated_tables()
    assert set(sections) == set(generated)
    for name, body in generated.items():
        assert sections[name] == body, (
            f"table {name} is stale: run `python deploy/conformance_tables.py --write`"
        )


def test_store_status_table_is_exactly_the_scps(document) -> None:
    try:
        from dicom_scp.status import StoreStatus
    except ImportError as exc:
        pytest.skip(f"dicom_scp.status is not importable ({exc})")
    rows = _table_after(document, "**Table 2.2-5. C-STORE response statuses**")
    listed = [int(row[1], 16) for row in rows]
    assert len(listed) == len(set(listed))
    assert set(listed) == {int(status) for status in StoreStatus}
    assert document.count("C-STORE response statuses**") == 1, "keep a single status table"


def test_sent_sop_classes_are_the_ones_the_worker_builds(document) -> None:
    rows = _table_after(document, "**Table 2.2-6. SOP classes of the SR Sender AE**")
    assert len(rows) == 2
    from pydicom.uid import UID

    for name, uid, scu, scp in rows:
        assert (scu, scp) == ("Yes", "No")
        assert UID(uid).name == name
    try:
        from triage import heatmap_sc, sr
    except ImportError as exc:
        pytest.skip(f"triage.sr is not importable ({exc})")
    from highdicom.sc import SCImage
    from highdicom.sr import ComprehensiveSR

    assert sr.ComprehensiveSR is ComprehensiveSR, "the worker builds another SR class now"
    assert heatmap_sc.hd.sc.SCImage is SCImage
    assert [uid for _name, uid, _scu, _scp in rows] == [
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.7",
    ]


def test_sr_codes_are_the_workers(document) -> None:
    try:
        from triage.sr import CODES
    except ImportError as exc:
        pytest.skip(f"triage.sr is not importable ({exc})")
    rows = _table_after(document, "**Table 6.3-1. Codes the node writes**")
    listed = {(row[0], row[1], row[2]) for row in rows}
    for code in (
        CODES.abnormal,
        CODES.normal,
        CODES.finding,
        CODES.procedure,
        CODES.probability,
        CODES.threshold,
        CODES.operating_point,
        CODES.unitless,
    ):
        assert (code.scheme_designator, code.value, code.meaning) in listed, code


def test_document_has_the_ps3_2_annex_a_sections(document) -> None:
    headings = [line for line in document.splitlines() if line.startswith("#")]
    for expected in (
        "## Conformance Statement Overview",
        "## Table of Contents",
        "## 1 Introduction",
        "## 2 Networking",
        "### 2.1 Implementation Model",
        "#### 2.1.1 Application Data Flow",
        "#### 2.1.2 Functional Definition of AEs",
        "#### 2.1.3 Sequencing of Real-World Activities",
        "### 2.2 AE Specifications",
        "### 2.3 Network Interfaces",
        "### 2.4 Configuration",
        "## 3 Media Interchange",
        "## 4 Support of Character Sets",
        "## 5 Security",
        "## 6 Annexes",
    ):
        assert expected in headings, expected
    assert "TODO" not in document
