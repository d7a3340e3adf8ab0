"""The file a C-STORE dataset is received into, which gives up cleanly on a full disk.

With chunked receive (:func:`dicom_scp.server.chunked_receive`) pynetdicom writes
each arriving fragment to a :func:`tempfile.NamedTemporaryFile`. When a write
fails (ENOSPC, EIO) pynetdicom lets the error escape its reactor: the association
is aborted and the partial file stays in the spool (46 MB seen) until the sweep.
:class:`GuardedReceiveFile` stands in for that file: on the first failed write it
removes the partial file at once, logs it, and ignores the rest of the dataset,
so that the association carries on and the C-STORE handler, finding no file,
answers 0xA700 (Out of Resources: the sender retries later).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

from pynetdicom import dimse_messages

log = logging.getLogger(__name__)

_FACTORY = "NamedTemporaryFile"
"""The name pynetdicom's ``dimse_messages`` creates its receive files with."""


class GuardedReceiveFile:
    """A ``NamedTemporaryFile(delete=False)`` that is removed when a write fails.

    Parameters
    ----------
    *args, **kwargs
        As for :func:`tempfile.NamedTemporaryFile`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._file = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - closed by pynetdicom
        self.name: str = self._file.name
        self.error: OSError | None = None

    @property
    def file(self) -> GuardedReceiveFile:
        """Itself (pynetdicom flushes ``file.file``)."""
        return self

    def write(self, data: bytes) -> int:
        """Write ``data``, or drop it once a write has failed."""
        if self.error is None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self._give_up(exc)
        return len(data)

    def flush(self) -> None:
        """Flush, or nothing once a write has failed."""
        if self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._give_up(exc)

    def close(self) -> None:
        """Close (errors after a failed write are already handled)."""
        with contextlib.suppress(OSError):
            self._file.close()

    def tell(self) -> int:
        """Position in the file (0 after a failed write)."""
        return 0 if self.error is not None else self._file.tell()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def _give_up(self, exc: OSError) -> None:
        self.error = exc
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)
        log.warning(
            "receiving a dataset into %s failed (%s): partial file removed; the C-STORE "
            "will be refused with 0xA700",
            self.name,
            exc.strerror or exc,
        )


def guard_receive_files() -> Callable[[], None]:
    """Have pynetdicom receive datasets into :class:`GuardedReceiveFile` (process-wide).

    Returns
    -------
    callable
        Restores pynetdicom's own ``NamedTemporaryFile``.
    """
    previous = getattr(dimse_messages, _FACTORY)
    setattr(dimse_messages, _FACTORY, GuardedReceiveFile)

    def restore() -> None:
        setattr(dimse_messages, _FACTORY, previous)

    return restore
