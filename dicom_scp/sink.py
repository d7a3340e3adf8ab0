"""Where received instances go: the ``InstanceSink`` seam and the spool sink.

Write and commit order of :class:`SpoolSink` (why nothing acknowledged is lost)
------------------------------------------------------------------------------
1. The received bytes are checked (no truncated element), the header is decoded
   and checked (UIDs, SOP class); a failure here touches neither disk nor database.
2. The bytes go to a temporary file ``.<SOP UID>.<random>.partial`` in the final
   directory: write, flush, ``fsync``. When the SCP received the dataset into a
   file (pynetdicom's chunked receive, into :func:`incoming_dir` inside the
   spool), that file is ``fsync``-ed and is the temporary file; on another file
   system it is copied to a ``.partial`` file instead.
3. A transaction records the instance (``record_instance``) with the *final* path
   and is flushed, not committed. A database failure here removes the temp file:
   nothing is visible.
4. ``os.replace`` moves the temp file to its final name, then the directory is
   ``fsync``-ed, so the name is durable before the row can be.
5. The transaction commits; only then is 0x0000 returned.

A crash before 4 leaves only a ``.partial`` file or a file in the incoming
directory, removed at start-up (:func:`clean_stale_temp_files`). A receive that
pynetdicom abandons mid-dataset (the association aborted, a disk that is really
full) leaves its file in the incoming directory; :meth:`SpoolSink.sweep_incoming`
removes it once it is older than the network timeout. A crash between 4 and 5
leaves a complete file under its final name with no row: the sender got no
success and re-sends, which overwrites it. A committed row therefore always
points to a complete, durable file. When the commit fails, the new file is
removed only if no earlier copy of the instance was there and the database
confirms it has no row for it; a re-sent instance's previously acknowledged copy
is never deleted. Instances with the same SOP Instance UID are serialised
(:class:`UidLocks`: a thread lock, and a byte-range lock on :data:`UID_LOCK_FILE`
in the spool for the other SCP processes of the node) so that this check is exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_scp.headers import (
    check_complete,
    instance_info_from_dataset,
    read_header,
    spool_path,
)
from dicom_scp.status import (
    ChangedDuplicate,
    OutOfResources,
    StoreError,
    StoreStatus,
    status_for_exception,
)
from worklist.core.contracts import RecordOutcome
from worklist.core.files import fsync_directory
from worklist.ingest import record_instance
from worklist.tables import Instance

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"
"""Suffix of spool files being written; such files are removed at start-up."""

INCOMING_DIR = ".incoming"
"""Directory under the spool root where the SCP receives datasets into files."""
ABANDONED_AFTER_S = 600.0
"""Default age after which a file in the incoming directory is an abandoned receive."""
_SWEEP_EVERY_S = 60.0

_LOCK_STRIPES = 64
UID_LOCK_FILE = ".uid-locks"
"""File in the spool whose bytes are locked, one per stripe of SOP Instance UIDs."""
_COPY_CHUNK = 1024 * 1024
SUPERSEDED_DIR = ".superseded"
"""Directory under the spool root keeping the earlier content of re-sent instances."""


def _same_content(first: Path, second: Path) -> bool:
    """True when both files hold the same bytes (sizes first, then chunk by chunk)."""
    try:
        if first.stat().st_size != second.stat().st_size:
            return False
        with open(first, "rb") as a, open(second, "rb") as b:
            while True:
                chunk = a.read(_COPY_CHUNK)
                if chunk != b.read(_COPY_CHUNK):
                    return False
                if not chunk:
                    return True
    except OSError as exc:
        raise OutOfResources(f"spool: comparing with the stored copy failed: {exc}") from exc


def incoming_dir(spool_dir: Path) -> Path:
    """Return where the SCP receives datasets: inside the spool, so a rename moves them.

    Parameters
    ----------
    spool_dir : Path
        The spool root.

    Returns
    -------
    Path
        ``spool_dir/.incoming``; every file in it is an unfinished receive.
    """
    return Path(spool_dir) / INCOMING_DIR


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request, as the SCP hands it to a sink.

    The instance arrives either in memory (``encoded``) or, with pynetdicom's
    chunked receive, as a file (``dataset_path``, ``encoded`` then empty). A sink
    takes ownership of that file: on success it has been moved into the spool, on
    a failure after the checks it has been removed.

    Attributes
    ----------
    encoded : bytes
        Preamble, File Meta Information and the dataset exactly as received
        (empty when ``dataset_path`` is set).
    sop_class_uid : str
        The negotiated abstract syntax (Affected SOP Class UID).
    sop_instance_uid : str
        The command's Affected SOP Instance UID.
    transfer_syntax_uid : str
        The negotiated transfer syntax.
    calling_ae : str, optional
        The sender's AE title.
    peer_address : str, optional
        The sender's IP address.
    dataset_path : Path, optional
        The file holding preamble, File Meta and dataset as received, when the SCP
        received it into a file (see :func:`incoming_dir`).
    """

    encoded: bytes
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str | None = None
    peer_address: str | None = None
    dataset_path: Path | None = None


@dataclass(frozen=True)
class StoreResult:
    """What a sink did with an instance.

    Attributes
    ----------
    status : int
        The DIMSE status to answer with.
    comment : str, optional
        Error Comment for a failure.
    outcome : RecordOutcome, optional
        New or duplicate, on success.
    path : Path, optional
        Where the instance is stored, on success.
    """

    status: int
    comment: str | None = None
    outcome: RecordOutcome | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        """True for a success status."""
        return self.status == StoreStatus.SUCCESS


class InstanceSink(Protocol):
    """Takes received instances; the SCP knows only this interface."""

    def store(self, instance: ReceivedInstance) -> StoreResult:
        """Persist ``instance`` durably and return the status; never raise."""


def _make_dirs(root: Path, target: Path) -> None:
    """Create ``target`` (under ``root``), fsync-ing the parent of each new directory."""
    missing: list[Path] = []
    current = target
    while not current.is_dir():
        missing.append(current)
        if current == root or current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_directory(directory.parent)


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        log.debug("umask not readable from /proc; spool files get mode 0644")
    return 0o644


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def clean_stale_temp_files(spool_dir: Path) -> int:
    """Remove the temporary files an interrupted write left in the spool.

    Call it at start-up, before the SCP accepts associations. Removes every
    ``*.partial`` file and every file in :func:`incoming_dir`.

    Parameters
    ----------
    spool_dir : Path
        The spool root.

    Returns
    -------
    int
        How many files were removed.
    """
    if not spool_dir.is_dir():
        return 0
    removed = 0
    incoming = incoming_dir(spool_dir)
    stale = list(spool_dir.rglob(f"*{TEMP_SUFFIX}"))
    if incoming.is_dir():
        stale.extend(path for path in incoming.iterdir() if path.suffix != TEMP_SUFFIX)
    for path in stale:
        try:
            if path.is_file():
                path.unlink()
                removed += 1
        except OSError as exc:
            log.warning("could not remove stale temp file %s: %s", path, exc)
    if removed:
        log.info("removed %d stale temp file(s) from %s", removed, spool_dir)
    return removed


class UidLocks:
    """Serialise the stores of one SOP Instance UID across threads and processes.

    UIDs are hashed to one of a fixed number of stripes. A stripe is a thread lock
    (the threads of this process) and, taken inside it, a POSIX byte-range lock on
    byte ``stripe`` of :data:`UID_LOCK_FILE` in the spool (the other processes
    that store into the same spool; the kernel drops it if the process dies).

    Parameters
    ----------
    spool_dir : Path
        The spool root; the lock file is created there on first use.
    """

    def __init__(self, spool_dir: Path) -> None:
        self.path = Path(spool_dir) / UID_LOCK_FILE
        self._threads = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._fd: int | None = None
        self._opening = threading.Lock()

    @contextlib.contextmanager
    def hold(self, sop_uid: str) -> Iterator[None]:
        """Hold the lock of ``sop_uid``'s stripe for the ``with`` block.

        Raises
        ------
        OutOfResources
            When the lock file cannot be opened or locked (0xA700: retry later).
        """
        stripe = zlib.crc32(sop_uid.encode()) % _LOCK_STRIPES
        with self._threads[stripe]:
            fd = self.open()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, stripe)
            except OSError as exc:
                raise OutOfResources(f"spool lock failed: {exc.strerror or exc}") from exc
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, stripe)

    def open(self) -> int:
        """Open the lock file (once) and return its descriptor.

        Raises
        ------
        OutOfResources
            When it cannot be created or opened (a spool that cannot be written).
        """
        with self._opening:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as exc:
                    raise OutOfResources(
                        f"spool lock file {self.path}: {exc.strerror or exc}"
                    ) from exc
            return self._fd


class SpoolSink:
    """Stores instances in the spool and records them in the database.

    Parameters
    ----------
    spool_dir : Path
        The spool root (``settings.spool_dir``).
    session_factory : sessionmaker
        The process's session factory.
    min_free_mb : int
        Refuse (0xA700) when the spool's file system would have less free space.
    free_bytes : callable, optional
        Returns the free bytes of a path (default: ``shutil.disk_usage``); for tests.
    abandoned_after_s : float
        A file in :func:`incoming_dir` not written to for this long is a receive
        that was abandoned (the association aborted mid-dataset, for example on
        ENOSPC); :meth:`sweep_incoming` removes it. Must exceed the longest time an
        association may stay silent (the network timeout).
    resent_policy : str
        A known instance re-sent with other bytes: ``version`` (the new content is
        stored, the old kept in :data:`SUPERSEDED_DIR`, the study re-opened) or
        ``refuse`` (0xC004, the stored content kept); ``settings.resent_instance_policy``.
    """

    def __init__(
        self,
        spool_dir: Path,
        session_factory: sessionmaker[Session],
        min_free_mb: int,
        *,
        free_bytes: Callable[[Path], int] = _free_bytes,
        abandoned_after_s: float = ABANDONED_AFTER_S,
        resent_policy: str = "version",
    ) -> None:
        self.spool_dir = Path(spool_dir).absolute()
        self.resent_policy = resent_policy
        self.session_factory = session_factory
        self.min_free_mb = min_free_mb
        self.abandoned_after_s = abandoned_after_s
        self._free_bytes = free_bytes
        self._uid_locks = UidLocks(self.spool_dir)
        self._file_mode = _new_file_mode()
        self._low_space = False
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S

    def sweep_incoming(self) -> int:
        """Remove abandoned receives from the incoming directory.

        The SCP calls it from time to time and whenever the spool is short of
        space; a file that pynetdicom is still writing is touched at every
        fragment and is left alone.

        Returns
        -------
        int
            How many files were removed.
        """
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S
        incoming = incoming_dir(self.spool_dir)
        cutoff = time.time() - self.abandoned_after_s
        removed = 0
        try:
            entries = list(os.scandir(incoming))
        except OSError:
            return 0  # no incoming directory (yet): nothing received into files
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # moved into place or removed meanwhile
            except OSError as exc:
                log.warning("could not remove abandoned receive %s: %s", entry.path, exc)
        if removed:
            log.warning("removed %d abandoned receive(s) from %s", removed, incoming)
        return removed

    def store(self, instance: ReceivedInstance) -> StoreResult:
        """Persist and record ``instance``; see the module docstring for the order.

        Parameters
        ----------
        instance : ReceivedInstance

        Returns
        -------
        StoreResult
            Success only once the file is durable and the row committed.
        """
        try:
            if time.monotonic() >= self._next_sweep:
                self.sweep_incoming()
            return self._store(instance)
        except StoreError as exc:
            log.warning(
                "C-STORE of %s from %s refused with 0x%04X: %s",
                instance.sop_instance_uid,
                instance.calling_ae,
                exc.status,
                exc,
            )
            return StoreResult(int(exc.status), str(exc))
        except Exception as exc:  # the SCP must answer, never raise
            status = status_for_exception(exc)
            log.exception(
                "C-STORE of %s from %s failed unexpectedly (0x%04X)",
                instance.sop_instance_uid,
                instance.calling_ae,
                status,
            )
            return StoreResult(int(status), f"{type(exc).__name__}")

    # Steps ------------------------------------------------------------------------

    def _check_free_space(self, size: int) -> None:
        needed = self.min_free_mb * 1024 * 1024 + size
        try:
            free = self._free_bytes(self.spool_dir)
            if free < needed and self.sweep_incoming():
                free = self._free_bytes(self.spool_dir)
        except OSError as exc:
            raise OutOfResources(f"spool not usable: {exc.strerror or exc}") from exc
        if free < needed:
            if not self._low_space:
                log.warning(
                    "spool %s has %d MB free, below the %d MB watermark: refusing C-STORE",
                    self.spool_dir,
                    free // (1024 * 1024),
                    self.min_free_mb,
                )
            self._low_space = True
            raise OutOfResources("spool below its free-space watermark")
        if self._low_space:
            log.warning("spool %s has free space again: accepting C-STORE", self.spool_dir)
            self._low_space = False

    def _write_temp(self, final: Path, data: bytes | BinaryIO) -> Path:
        try:
            _make_dirs(self.spool_dir, final.parent)
            temp = final.parent / f".{final.stem}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
            with open(temp, "xb") as fh:
                try:
                    if isinstance(data, bytes | bytearray):
                        fh.write(data)
                    else:
                        shutil.copyfileobj(data, fh, _COPY_CHUNK)
                    fh.flush()
                    os.fsync(fh.fileno())
                except BaseException:
                    fh.close()
                    temp.unlink(missing_ok=True)
                    raise
        except OSError as exc:
            raise OutOfResources(f"spool write failed: {exc.strerror or exc}") from exc
        return temp

    def _row_exists(self, sop_uid: str) -> bool | None:
        """True/False when the database answers, None when it cannot be asked."""
        try:
            with self.session_factory() as session:
                found = session.scalar(
                    select(Instance.id).where(Instance.sop_instance_uid == sop_uid)
                )
            return found is not None
        except SQLAlchemyError:
            log.exception("could not check whether instance %s was recorded", sop_uid)
            return None

    def _received_size(self, instance: ReceivedInstance) -> int:
        if instance.dataset_path is None:
            return len(instance.encoded)
        try:
            return os.stat(instance.dataset_path).st_size
        except FileNotFoundError as exc:
            # dicom_scp.receive_files removed it: writing it failed while it arrived.
            raise OutOfResources("spool write failed while receiving (disk full?)") from exc
        except OSError as exc:
            raise OutOfResources(f"received file unusable: {exc.strerror or exc}") from exc

    def _adopt_received_file(self, final: Path, received: Path) -> Path:
        """Make the file the SCP received into durable and return it as the temp file.

        On the spool's file system it is fsync-ed in place and later renamed to
        ``final``; elsewhere it is copied to a temp file next to ``final``. Either way
        the returned file is complete and fsync-ed; on failure it is removed.
        """
        try:
            _make_dirs(self.spool_dir, final.parent)
            if os.stat(received).st_dev != os.stat(final.parent).st_dev:
                try:
                    with open(received, "rb") as source:
                        return self._write_temp(final, source)
                finally:
                    received.unlink(missing_ok=True)
            fd = os.open(received, os.O_RDONLY)
            try:
                # pynetdicom's temporary file is 0600: give it the mode of a file
                # the sink writes itself.
                os.fchmod(fd, self._file_mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            received.unlink(missing_ok=True)
            raise OutOfResources(f"spool write failed: {exc.strerror or exc}") from exc
        return received

    def _store(self, instance: ReceivedInstance) -> StoreResult:
        received = instance.dataset_path
        source: bytes | Path = instance.encoded if received is None else Path(received)
        size = self._received_size(instance)
        # A dataset received into the spool already takes its space there.
        on_spool = received is not None and Path(received).is_relative_to(self.spool_dir)
        self._check_free_space(0 if on_spool else size)
        check_complete(source, instance.transfer_syntax_uid)
        header = read_header(source)
        info = instance_info_from_dataset(
            header,
            sop_class_uid=instance.sop_class_uid,
            sop_instance_uid=instance.sop_instance_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            file_path="",
            size_bytes=size,
            calling_ae=instance.calling_ae,
            peer_address=instance.peer_address,
        )
        study_uid, sop_uid = info.study_instance_uid, info.sop_instance_uid
        final = spool_path(self.spool_dir, study_uid, info.series_instance_uid, sop_uid)
        info = replace(info, file_path=str(final))

        if isinstance(source, Path):
            temp = self._adopt_received_file(final, source)
        else:
            temp = self._write_temp(final, source)
        try:
            self._uid_locks.open()
        except OutOfResources:
            temp.unlink(missing_ok=True)
            raise
        with self._uid_locks.hold(sop_uid):
            had_copy = final.exists()
            try:
                changed = had_copy and not _same_content(final, temp)
                if changed and self.resent_policy == "refuse":
                    raise ChangedDuplicate("SOP Instance UID already stored with other content")
            except StoreError:
                temp.unlink(missing_ok=True)
                raise
            session = self.session_factory()
            try:
                try:
                    outcome = record_instance(session, info=info, content_changed=changed)
                    if outcome is RecordOutcome.NEW_VERSION:
                        self._keep_superseded(final, sop_uid)
                except SQLAlchemyError as exc:
                    raise OutOfResources(f"database error: {type(exc).__name__}") from exc
                try:
                    os.replace(temp, final)
                    fsync_directory(final.parent)
                except OSError as exc:
                    if not had_copy and not temp.exists():
                        self._remove_final(final)
                    raise OutOfResources(f"spool rename failed: {exc.strerror or exc}") from exc
                try:
                    session.commit()
                except SQLAlchemyError as exc:
                    session.rollback()
                    recorded = self._row_exists(sop_uid)
                    if recorded and not had_copy:
                        # The commit reached the database after all: the row points
                        # to the complete file just renamed into place.
                        outcome = RecordOutcome.NEW
                    else:
                        if recorded is False and not had_copy:
                            self._remove_final(final)
                        raise OutOfResources(
                            f"database commit failed: {type(exc).__name__}"
                        ) from exc
            except BaseException:
                session.rollback()
                temp.unlink(missing_ok=True)
                raise
            finally:
                session.close()

        log.info(
            "stored %s instance %s (study %s, %s) from %s@%s",
            outcome.value,
            sop_uid,
            study_uid,
            instance.transfer_syntax_uid,
            instance.calling_ae,
            instance.peer_address,
        )
        return StoreResult(int(StoreStatus.SUCCESS), outcome=outcome, path=final)

    def _keep_superseded(self, final: Path, sop_uid: str) -> None:
        """Hard-link the stored copy into :data:`SUPERSEDED_DIR` before it is replaced."""
        directory = self.spool_dir / SUPERSEDED_DIR
        kept = directory / f"{sop_uid}.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:8]}"
        try:
            _make_dirs(self.spool_dir, directory)
            os.link(final, kept)
            fsync_directory(directory)
        except OSError as exc:
            raise OutOfResources(f"spool: keeping the previous version failed: {exc}") from exc
        log.warning(
            "instance %s re-sent with other content: new version stored, previous one kept "
            "as %s; its study is triaged again",
            sop_uid,
            kept,
        )

    @staticmethod
    def _remove_final(final: Path) -> None:
        """Remove a renamed file that no row points to (a failed commit or fsync)."""
        try:
            final.unlink(missing_ok=True)
            fsync_directory(final.parent)
        except OSError:
            log.exception("could not remove %s after a failed store", final)
