"""Logging set-up shared by every entry point of the node."""

from __future__ import annotations

import logging

#: Libraries whose INFO lines are noise or may quote element values (patient data).
QUIET_LIBRARIES = ("pynetdicom", "highdicom")

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
