"""A node's processes: children that die with it, and one node per data directory.

:func:`die_with_parent` asks Linux to SIGKILL the calling process when its parent
dies (``PR_SET_PDEATHSIG``), so a node killed with SIGKILL leaves no worker or SCP
process behind. :class:`DataDirLock` is an exclusive ``flock`` on
``DATA_DIR/node.lock``, taken by ``triage-node serve`` at start and inherited by
the worker processes it starts: while any of them lives (an orphan of a killed
node included), another node on the same data directory refuses to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import sys
from pathlib import Path

LOCK_FILE = "node.lock"
"""File in the data directory that the running node holds locked."""
_PR_SET_PDEATHSIG = 1


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie does not).

    Parameters
    ----------
    pid : int

    Returns
    -------
    bool
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DataDirInUseError(RuntimeError):
    """Another node, or a process left over from one, uses this data directory."""


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have this process SIGKILLed when its parent dies (Linux; no-op elsewhere).

    Call it first thing in a child (or as ``preexec_fn``). The signal follows the
    parent *thread* that started the child, so start children from a thread that
    lives as long as the node (the main thread).

    Parameters
    ----------
    parent_pid : int, optional
        The parent's pid when the child was started: if the parent died before
        this call, the process exits now (the signal would never come).
    """
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


class DataDirLock:
    """The exclusive lock of a data directory (see the module docstring).

    Parameters
    ----------
    data_dir : Path
        The node's data directory (created when missing).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock and write this process's pid into the file.

        Returns
        -------
        DataDirLock
            Self; its :attr:`fd` is the descriptor children must inherit
            (``pass_fds``) to keep the directory locked while they live.

        Raises
        ------
        DataDirInUseError
            With the pids recorded by the holder, when the lock is held.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text(errors="replace").split()
            os.close(fd)
            raise DataDirInUseError(
                f"data directory {self.path.parent} is in use by another node or by "
                f"processes left over from one (pids recorded: {' '.join(holder) or '?'}); "
                "stop them (see `fuser -v "
                f"{self.path}`) before starting this node"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def record_child(self, pid: int) -> None:
        """Add a child's pid to the file (for the error message of a later start)."""
        if self.fd is not None:
            os.lseek(self.fd, 0, os.SEEK_END)
            os.write(self.fd, f"{pid}\n".encode())

    def release(self) -> None:
        """Unlock and close (children that inherited it still hold it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
