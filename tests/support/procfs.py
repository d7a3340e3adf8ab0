"""The machine's processes as /proc lists them: for tests that watch a node's processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["descendants", "proc_stats", "rss_bytes"]


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Each process's pid and its ``/proc/PID/stat`` fields from the state (field 3) on;
    processes that end while being read are left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and its live descendants (zombies left out)."""
    parents = {child: int(fields[1]) for child, fields in proc_stats() if fields[0] not in "ZX"}
    found, frontier = [pid], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
