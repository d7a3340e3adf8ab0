"""Library warnings and log lines lose the values they quote (issue 13, point 8)."""

from __future__ import annotations

import logging
import warnings

import pytest

from worklist.core.logs import configure_logging, redact_values


@pytest.mark.parametrize(
    "text",
    [
        'The string "SMITH JOHN" is unlikely to represent the intended person name',
        "Invalid value for VR PN: 'SMITH^JOHN=山田^太郎'. Please see <https://x>",
        'The string "XSS<script>alert("SMITH JOHN")</script>" is unlikely',
    ],
)
def test_quoted_values_are_withheld(text: str) -> None:
    out = redact_values(text)
    assert "SMITH" not in out and "JOHN" not in out and "山田" not in out
    assert "<value withheld>" in out


def test_warnings_and_library_records_are_redacted(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from highdicom.valuerep import check_person_name
    from pydicom.misc import warn_and_log

    original_showwarning = warnings.showwarning
    try:
        configure_logging("INFO")
        with caplog.at_level(logging.WARNING), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = logging._showwarning  # type: ignore[attr-defined]
            check_person_name("QZXSMITH QZXJOHN")
            warn_and_log("Invalid value for VR PN: 'QZXDOE^QZXJANE'")
    finally:
        logging.captureWarnings(False)
        warnings.showwarning = original_showwarning
    text = caplog.text + capsys.readouterr().err
    assert "unlikely to represent" in text and "Invalid value for VR PN" in text
    assert "QZX" not in text, text
