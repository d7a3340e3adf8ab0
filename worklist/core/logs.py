"""Logging set-up shared by every entry point of the node.

Libraries quote the values of the data they are given in their warnings: highdicom's
``UserWarning`` about a one-component person name, pydicom's "Invalid value for VR
PN: '...'" (logged *and* warned). Those values are patient names and IDs, so
:func:`configure_logging` rewrites them in every process that calls it (``serve``,
``scp`` and its processes, ``worker`` and its pool, the decode child, ``api``):

- Python warnings are routed to logging (``py.warnings``), and their text, whatever
  prints it, loses every quoted value (:func:`redact_values`, installed as
  ``warnings.formatwarning``);
- log records of the libraries that handle our data (pydicom, highdicom,
  pynetdicom) and of ``py.warnings`` are redacted the same way when they are made
  (a log record factory, so it holds whatever handlers Celery installs later).
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

#: Libraries whose INFO lines are noise or may quote element values (patient data).
QUIET_LIBRARIES = ("pynetdicom", "highdicom")
#: Loggers whose messages may quote element values: redacted when a record is made.
REDACTED_LOGGERS = ("pydicom", "highdicom", "pynetdicom", "py.warnings")
#: From the first quote to the last one of the same kind (greedy: a value may hold quotes).
_QUOTED = re.compile(r"([\"'])(?:.*)\1", re.S)
REDACTED = "<value withheld>"


def redact_values(text: str) -> str:
    """Replace every quoted value in a library's message by a placeholder.

    Parameters
    ----------
    text : str
        For example ``The string "SMITH JOHN" is unlikely to represent...``.

    Returns
    -------
    str
        ``The string "<value withheld>" is unlikely to represent...``.
    """
    return _QUOTED.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(1)}", text)


_original_formatwarning = warnings.formatwarning


def _formatwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    # The source line is left out: it is library code, and may name the variable.
    return redact_values(_original_formatwarning(message, category, filename, lineno, ""))


def _install_redaction() -> None:
    """Redact warnings and the records of :data:`REDACTED_LOGGERS` (idempotent)."""
    warnings.formatwarning = _formatwarning
    logging.captureWarnings(True)
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts_values", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.name.startswith(REDACTED_LOGGERS):
            record.msg = redact_values(record.getMessage())
            record.args = None
        return record

    make_record.redacts_values = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


#: Libraries whose start-up chatter (Alembic's plugin lines, Celery's connection lines)
#: is shown only with ``--verbose``.
VERBOSE_ONLY_LIBRARIES = ("alembic", "celery", "kombu", "models.runtime")

#: Warnings shown only with ``--verbose`` (message starts): Celery's superuser warning
#: (the container and systemd set the user) and its 6.0 deprecation notice.
VERBOSE_ONLY_WARNINGS = (
    "You're running the worker with superuser privileges",
    "\nIn Celery 5.1 we introduced an optional breaking change",
)


def configure_logging(level: str, *, with_process: bool = False, verbose: bool = False) -> None:
    """Configure the root logger once for a node process.

    pynetdicom logs every PDU at DEBUG and element values in some INFO lines, and
    highdicom logs a line per copied module for every SR: both are kept at WARNING.
    pynetdicom's standard event handlers, which decode every PDU and DIMSE message
    only to log them at INFO and DEBUG, are therefore not bound at all
    (``_config.LOG_HANDLER_LEVEL = "none"``): they cost CPU on every PDU and could
    never print anything.

    Parameters
    ----------
    level : str
        Level name of the node's own loggers (``INFO``, ``DEBUG``...).
    with_process : bool
        Put the process name in each line (worker pools).
    verbose : bool
        Also show the libraries' start-up chatter (:data:`VERBOSE_ONLY_LIBRARIES`,
        :data:`VERBOSE_ONLY_WARNINGS`); off by default.
    """
    _install_redaction()
    process = " %(processName)s" if with_process else ""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s{process} %(name)s: %(message)s",
    )
    quiet = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    if not verbose:
        import warnings

        for name in VERBOSE_ONLY_LIBRARIES:
            logging.getLogger(name).setLevel(quiet)
        for message in VERBOSE_ONLY_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none"
