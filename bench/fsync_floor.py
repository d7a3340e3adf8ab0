"""What durability alone costs per instance on this disk, whatever the receiver.

The node acknowledges a C-STORE only after the file, its directory entry and its
database row are on disk. On one association the sender waits for each answer, so
these waits add up: they set a ceiling on instances/s that no receiver which keeps
that promise can pass, however little CPU it uses. dcmtk's ``storescp`` does none of
them. This measures each step, for the benchmark's two instance sizes, in a
directory on the same file system as the ingest benchmark's scratch space::

    .venv/bin/python bench/fsync_floor.py [--dir DIR] [--count 300]

It prints the median and 90th percentile per step and the ceiling it implies for
one association (1 / median of the whole sequence).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

SIZES = {"small": 512 * 1024, "large": 7_200_000}


def _timed(step: Callable[[int], None], count: int) -> list[float]:
    samples = []
    for i in range(count):
        started = perf_counter()
        step(i)
        samples.append(perf_counter() - started)
    return samples


def measure(directory: Path, size: int, count: int) -> dict[str, list[float]]:
    """Time each durability step ``count`` times for files of ``size`` bytes.

    Parameters
    ----------
    directory : Path
        Empty scratch directory.
    size : int
        Bytes per file.
    count : int
        Files per step.

    Returns
    -------
    dict of str to list of float
        Seconds per file, by step.
    """
    payload = os.urandom(size)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    db = sqlite3.connect(directory / "index.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE instances (uid TEXT PRIMARY KEY, path TEXT)")

    def write(name: str, *, sync: bool) -> Path:
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def durable(i: int) -> None:
        temp = write(f"d{i}.tmp", sync=True)
        final = temp.with_suffix(".dcm")
        os.replace(temp, final)
        os.fsync(dir_fd)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO instances VALUES (?, ?)", (f"1.2.3.{i}", str(final)))
        db.execute("COMMIT")

    def commit_only(i: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO instances VALUES (?, ?)", (f"9.9.9.{i}", "x"))
        db.execute("COMMIT")

    try:
        return {
            "write, no sync (storescp)": _timed(lambda i: write(f"a{i}", sync=False), count),
            "write + fsync": _timed(lambda i: write(f"b{i}", sync=True), count),
            "SQLite WAL commit (synchronous=FULL)": _timed(commit_only, count),
            "write + fsync + rename + dir fsync + commit (node)": _timed(durable, count),
        }
    finally:
        db.close()
        os.close(dir_fd)


def main() -> None:
    """Measure both sizes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="parent of the scratch directory")
    parser.add_argument("--count", type=int, default=300, help="files per step and size")
    args = parser.parse_args()
    print("| size | step | median ms | p90 ms | ceiling on one association |")  # noqa: T201
    print("|---|---|---:|---:|---:|")  # noqa: T201
    for name, size in SIZES.items():
        with tempfile.TemporaryDirectory(prefix="fsync-floor-", dir=args.dir) as scratch:
            count = args.count if name == "small" else max(20, args.count // 10)
            for step, samples in measure(Path(scratch), size, count).items():
                median = statistics.median(samples)
                p90 = statistics.quantiles(samples, n=10)[-1]
                print(  # noqa: T201
                    f"| {name} | {step} | {median * 1000:.2f} | {p90 * 1000:.2f} "
                    f"| {1 / median:.0f} inst/s |"
                )


if __name__ == "__main__":
    main()
