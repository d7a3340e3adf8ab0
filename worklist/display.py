"""How the worklist writes values for people: probabilities, skip reasons, times.

Pure functions, used by the JSON API (display fields of the worklist rows) and the
web page, so the list and the study page say the same thing the same way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

__all__ = ["local_time", "plain_skip_reason", "probability_text"]


def probability_text(probability: float | None) -> str:
    """A probability as a rounded percentage that never claims certainty.

    ``0.996`` -> ``"> 99 %"``, ``0.004`` -> ``"< 1 %"``, ``0.71`` -> ``"71 %"``,
    None -> ``"—"``.

    Parameters
    ----------
    probability : float or None

    Returns
    -------
    str
    """
    if probability is None:
        return "—"
    percent = probability * 100
    if percent > 99:
        return "> 99 %"
    if percent < 1:
        return "< 1 %"
    return f"{percent:.0f} %"


def plain_skip_reason(reason: str | None, modality: str | None = None) -> str:
    """Why an image was not evaluated, in plain words.

    The stored reason is ``"<code>: <detail>"`` (:class:`triage.selection.SkipCode`);
    this turns it into what a radiologist says: ``"lateral view"``,
    ``"CT: not a chest radiograph"``, ``"not an image (structured report)"``.

    Parameters
    ----------
    reason : str or None
        The stored reason.
    modality : str, optional
        The image's modality, named for a modality that is not CR or DX.

    Returns
    -------
    str
    """
    if not reason:
        return "not triaged yet"
    code, _, detail = reason.partition(": ")
    if code == "lateral_view":
        view = re.search(r"View Position is (\S+),", detail)
        return f"lateral view ({view[1]})" if view else "lateral view"
    if code == "modality":
        found = re.search(r"modality (\S+) is not", detail)
        name = (modality or (found[1] if found else "") or "").strip()
        if not name or name == "absent":
            return "no modality: not a chest radiograph"
        return f"{name}: not a chest radiograph"
    if code == "not_an_image":
        if "1.2.840.10008.5.1.4.1.1.88." in detail:
            return "not an image (structured report)"
        if "1.2.840.10008.5.1.4.1.1.11." in detail:
            return "not an image (presentation state)"
        if "1.2.840.10008.5.1.4.1.1.104." in detail:
            return "not an image (document)"
        return "not an image"
    if code == "not_chest":
        part = re.search(r"Body Part Examined is (.+)$", detail)
        return f"not a chest image ({part[1].strip().lower()})" if part else "not a chest image"
    if code == "for_processing":
        return "raw detector image (DX for processing)"
    if code == "not_single_frame_grayscale":
        return "colour or multi-frame image"
    if code == "cannot_decode":
        return "the pixels cannot be decoded"
    if code == "cannot_read":
        return "the file cannot be read"
    return reason


def local_time(value: datetime | None, time_zone: str, *, seconds: bool = False) -> str:
    """An aware time in the node's display time zone, 24-hour, with the zone shown.

    ``2026-11-29 14:05 CET``; a naive value is taken as UTC (as the database stores).

    Parameters
    ----------
    value : datetime or None
    time_zone : str
        IANA name (``Settings.time_zone``).
    seconds : bool
        Show the seconds.

    Returns
    -------
    str
        ``"—"`` for None.
    """
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    shown = value.astimezone(ZoneInfo(time_zone))
    return shown.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "") + " %Z")
