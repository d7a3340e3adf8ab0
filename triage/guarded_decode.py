"""Pixel decoding in a child process under a memory limit.

The triage worker never decodes pixel data itself. Each worker process keeps one
child (``python -m triage.guarded_decode``: a fresh interpreter without ONNX Runtime,
the database or the broker; pickled requests on its standard input) that, for one file at a time:

1. reads the file and checks the frame's own header against the dataset and the
   pixel budget (:func:`models.frame_headers.check_frame`), before any decoder runs;
2. decodes it, at a reduced resolution where the codec allows and the model input and
   the preview need no more (:mod:`models.reduced_decode`), and preprocesses it as the
   model card says (or only decodes, for an image the model is not for);
3. renders the PNG preview the worklist shows (:func:`worklist.thumbnails.png_from_dataset`)
   from the same decoded frame.

The child's address space is limited (``RLIMIT_AS``: its size after start-up plus
``decode_memory_mb``), so a decoder that allocates too much fails with
``MemoryError`` or dies, and only the child is lost: the image is recorded as not
evaluated with the reason, and a new child starts for the next image. A decode that
takes longer than ``timeout`` seconds is killed the same way.

Why a child rather than ``RLIMIT_AS`` on the worker itself: a CUDA context reserves
far more address space than any limit meant for a decoder, ONNX Runtime's arenas grow
with the batch, and a decoder that crashes (a segfault in a C library) would take the
worker, and the study it holds, with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from worklist.core.settings import Settings

__all__ = ["DecodedImage", "GuardedDecoder", "decode_image", "get_decoder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedImage:
    """What the decode child made of one file.

    Attributes
    ----------
    tensor : numpy.ndarray or None
        The model input (when a spec was given and the image could be used).
    error : str or None
        Why there is no tensor/preview (a readable reason), else None.
    png : bytes or None
        The preview.
    """

    tensor: np.ndarray | None = None
    error: str | None = None
    png: bytes | None = None


def decode_image(
    path: str,
    spec: dict[str, Any] | None,
    *,
    max_pixels: int,
    thumbnail_size: int = 256,
    reduced: bool = True,
) -> DecodedImage:
    """Check, decode, preprocess and preview one file (the child's work; pure, no limit).

    Parameters
    ----------
    path : str
    spec : dict or None
        :meth:`models.preprocess.PreprocessSpec.to_dict`; None: preview only.
    max_pixels : int
        Pixel budget of one frame.
    thumbnail_size : int
    reduced : bool
        Decode at a reduced resolution where possible
        (:func:`models.reduced_decode.decode_reduced`); else in full.

    Returns
    -------
    DecodedImage
    """
    import pydicom

    from models.frame_headers import FrameHeaderError, check_frame
    from models.preprocess import PreprocessError, PreprocessSpec, preprocess_dataset
    from models.reduced_decode import decode_reduced, needed_side
    from worklist.thumbnails import ThumbnailError, png_from_dataset

    try:
        ds = pydicom.dcmread(path)
        check_frame(ds, max_pixels=max_pixels)
    except FrameHeaderError as exc:
        return DecodedImage(error=f"cannot decode pixel data: {exc}")
    except Exception as exc:  # noqa: BLE001 - any read failure is a recorded reason
        return DecodedImage(error=f"cannot decode pixel data: {type(exc).__name__}: {exc}")
    parsed = PreprocessSpec.from_dict(spec) if spec is not None else None
    pixels = None
    if reduced:
        side = needed_side(parsed.input_size if parsed else None, thumbnail_size)
        pixels = decode_reduced(ds, min_side=side)
    tensor = None
    if parsed is not None:
        try:
            tensor = preprocess_dataset(ds, parsed, pixels=pixels)
        except PreprocessError as exc:
            return DecodedImage(error=str(exc))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken image: a recorded reason
            return DecodedImage(error=f"{type(exc).__name__}: {exc}")
    try:
        png = png_from_dataset(ds, size=thumbnail_size, pixels=pixels)
    except ThumbnailError as exc:
        if tensor is None:
            return DecodedImage(error=f"cannot decode pixel data: {exc}")
        log.info("no preview of %s: %s", os.path.basename(path), exc)
        png = None
    return DecodedImage(tensor=tensor, png=png)


def _vm_size_bytes() -> int:
    """This process's address-space size (``VmSize``), 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _serve(conn_in: Connection, conn_out: Connection, memory_mb: int, max_pixels: int) -> None:
    """The decode child's loop: one request in, one :class:`DecodedImage` out."""
    import resource

    # Import every decoder before the limit, so that the limit is the decode's margin.
    import pydicom.pixels  # noqa: F401

    import models.preprocess  # noqa: F401
    import worklist.thumbnails  # noqa: F401

    for module in ("pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls"):
        with contextlib.suppress(ImportError):
            __import__(module)
    limit = _vm_size_bytes() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            request = conn_in.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        path, spec, thumbnail_size, reduced = request
        try:
            result = decode_image(
                path, spec, max_pixels=max_pixels, thumbnail_size=thumbnail_size, reduced=reduced
            )
        except MemoryError:
            result = DecodedImage(
                error=f"cannot decode pixel data: decoding needed more than the "
                f"{memory_mb} MB memory limit"
            )
        try:
            conn_out.send(result)
        except MemoryError:
            conn_out.send(DecodedImage(error="cannot decode pixel data: result too large"))


def main(argv: list[str] | None = None) -> int:
    """``python -m triage.guarded_decode MEMORY_MB MAX_PIXELS LOG_LEVEL``: the decode child.

    Requests arrive pickled on standard input and results leave on the original
    standard output; anything a library prints goes to standard error instead.

    Parameters
    ----------
    argv : list of str, optional

    Returns
    -------
    int
    """
    import sys

    from worklist.core.logs import configure_logging

    memory_mb, max_pixels, level = (argv if argv is not None else sys.argv[1:])[:3]
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints must not corrupt the result stream
    configure_logging(level, with_process=True)
    _serve(Connection(0, writable=False), Connection(out_fd, readable=False), int(memory_mb),
           int(max_pixels))  # fmt: skip
    return 0


class GuardedDecoder:
    """One decode child, started on first use and again after it died.

    Parameters
    ----------
    memory_mb : int
        Address space the child may add to its start-up size.
    max_pixels : int
        Pixel budget of one frame (checked before decoding).
    timeout : float
        Seconds one file may take; then the child is killed.
    reduced : bool
        Decode at a reduced resolution where possible (see :func:`decode_image`).
    """

    def __init__(
        self, *, memory_mb: int, max_pixels: int, timeout: float = 120.0, reduced: bool = True
    ) -> None:
        self.memory_mb = memory_mb
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.reduced = reduced
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id, None when none runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> None:
        env = dict(os.environ)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "triage.guarded_decode", str(self.memory_mb),
             str(self.max_pixels), logging.getLevelName(logging.getLogger().level)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        self._send = Connection(os.dup(proc.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        self._proc = proc

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait(timeout=10)
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._proc = self._send = self._recv = None

    def decode(
        self, path: str, spec: dict[str, Any] | None, *, thumbnail_size: int = 256
    ) -> DecodedImage:
        """Decode one file in the child (see the module docstring).

        Parameters
        ----------
        path : str
        spec : dict or None
            The preprocessing spec as a dict; None: preview only.
        thumbnail_size : int

        Returns
        -------
        DecodedImage
            ``error`` says why when the child failed, died or timed out.
        """
        with self._lock:
            if self.pid is None:
                self._kill()
                self._start()
            assert self._send is not None and self._recv is not None
            try:
                self._send.send((str(path), spec, thumbnail_size, self.reduced))
                if self._recv.poll(self.timeout):
                    made: DecodedImage = self._recv.recv()
                    return made
                why = f"decoding took longer than {self.timeout:.0f} s"
            except (EOFError, OSError):
                why = (
                    f"the decoder died (more than the {self.memory_mb} MB memory limit, "
                    "or a decoder crash)"
                )
            self._kill()
            log.warning("decode child stopped: %s", why)
            return DecodedImage(error=f"cannot decode pixel data: {why}")

    def close(self) -> None:
        """Stop the child."""
        with self._lock:
            if self._send is not None and self.pid is not None:
                try:
                    self._send.send(None)
                    self._proc.wait(timeout=5)  # type: ignore[union-attr]
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill()


_DECODERS: dict[tuple[int, int, int, float, bool], GuardedDecoder] = {}
_DECODERS_LOCK = threading.Lock()


def get_decoder(settings: Settings) -> GuardedDecoder:
    """This process's decoder for the settings' limits (one child per worker process).

    Parameters
    ----------
    settings : Settings
        ``decode_memory_mb``, ``max_image_pixels``, ``decode_timeout_seconds``,
        ``reduced_decode``.

    Returns
    -------
    GuardedDecoder
    """
    key = (
        os.getpid(),
        int(settings.decode_memory_mb),
        int(settings.max_image_pixels),
        float(settings.decode_timeout_seconds),
        bool(settings.reduced_decode),
    )
    with _DECODERS_LOCK:
        decoder = _DECODERS.get(key)
        if decoder is None:
            decoder = GuardedDecoder(
                memory_mb=key[1], max_pixels=key[2], timeout=key[3], reduced=key[4]
            )
            _DECODERS[key] = decoder
        return decoder


if __name__ == "__main__":
    # Run the module's own copy (not __main__'s), so results pickle as
    # triage.guarded_decode.DecodedImage.
    from triage.guarded_decode import main as _main

    sys.exit(_main())
