"""Logging set-up shared by every entry point of the node."""

from __future__ import annotations

import logging

#: Libraries whose INFO lines are noise or may quote element values (patient data).
QUIET_LIBRARIES = ("pynetdicom", "highdicom")


def configure_logging(level: str, *, with_process: bool = False) -> None:
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
    """
    process = " %(processName)s" if with_process else ""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s{process} %(name)s: %(message)s",
    )
    quiet = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none"
