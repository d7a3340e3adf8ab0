"""File-system steps shared by the SCP's spool and the workers' results."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make the entries of ``path`` (a new name, a rename, a removal) durable.

    Parameters
    ----------
    path : Path
        A directory.

    Raises
    ------
    OSError
        When it cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
