"""What the SR build of one study costs, and where it goes.

Builds the SR of a real study (the header of ``RG1_J2KI.dcm``, read as the worker
reads it) with :func:`triage.sr.build_sr` ``--rounds`` times and splits the time
between our code, the highdicom content templates and highdicom's
``ComprehensiveSR`` constructor, whose parts are timed by wrapping the functions it
calls (``deepcopy`` of the content tree, ``collect_evidence`` and the SCOORD3D
check, which search the whole tree building a validated content item per node, the
contributing equipment, the base ``SOPClass`` attributes). Also timed:
:func:`triage.sr.write_sr` (encode, fsync, rename, fsync of the directory).
``--profile`` prints the top of a cProfile of the build.

Usage::

    python bench/sr_build.py --rounds 40 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SOURCE = (REPO / ".." / "shared" / "data" / "dicom" / "real" / "RG1_J2KI.dcm").resolve()


def main(argv: Sequence[str] | None = None) -> int:
    """Time the SR build; print a table and optionally write JSON."""
    import pydicom

    import triage.sr as sr_module
    from triage.sr import SRContent, build_sr, write_sr

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.source.exists():
        parser.error(f"{args.source} not found (the shared data set is needed)")

    header = pydicom.dcmread(args.source, defer_size="256 KB")

    def content(revision: int) -> SRContent:
        return SRContent(
            study_instance_uid=str(header.StudyInstanceUID),
            revision=revision,
            decision="abnormal",
            probability=0.73,
            threshold=0.5,
            operating_point="balanced",
            model_name="cxr-triage-default",
            model_version="0.1.0",
            model_sha256="0" * 64,
            manufacturer="cxr-triage-node",
            device_name="TRIAGE",
            content_datetime=datetime.now(UTC),
        )

    import highdicom.base
    import highdicom.sr.sop

    spent: dict[str, float] = {}
    labels: list[str] = []

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)
        labels.append(label)

    sop, base = highdicom.sr.sop, highdicom.base.SOPClass
    timed(sop.ComprehensiveSR, "__init__", "ComprehensiveSR(), all")
    timed(sop, "deepcopy", "  deepcopy of the content tree")
    timed(sop, "collect_evidence", "  collect_evidence (2 tree searches)")
    timed(sop, "find_content_items", "  SCOORD3D check (1 tree search)")
    timed(base, "_add_contributing_equipment", "  contributing equipment")
    timed(base, "__init__", "  SOPClass attributes")
    timed(sr_module, "MeasurementReport", "MeasurementReport (TID 1500)")
    timed(sr_module, "MeasurementsAndQualitativeEvaluations", "measurement group (TID 1501)")
    timed(sr_module, "_clean_evidence", "evidence header copy")
    builds: list[float] = []
    writes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sr-build-") as tmp:
        for revision in range(1, args.rounds + 3):
            if revision == 3:  # the first builds warm up imports and caches
                spent.clear()
            t0 = time.perf_counter()
            sr = build_sr(content(revision), [header])
            t1 = time.perf_counter()
            write_sr(sr, Path(tmp))
            if revision > 2:
                builds.append(t1 - t0)
                writes.append(time.perf_counter() - t1)
    n = len(builds)
    report: dict[str, Any] = {
        "rounds": n,
        "build_ms_median": round(statistics.median(builds) * 1000, 1),
        "build_ms_mean": round(statistics.fmean(builds) * 1000, 1),
        "write_ms_median": round(statistics.median(writes) * 1000, 1),
        "parts_ms_mean": {k: round(spent.get(k, 0.0) / n * 1000, 1) for k in labels},
    }
    lines = [
        f"SR build of one study, {n} rounds: median {report['build_ms_median']:.1f} ms, "
        f"mean {report['build_ms_mean']:.1f} ms; "
        f"write_sr median {report['write_ms_median']:.1f} ms",
        *(f"  {k:40s} {v:6.1f} ms" for k, v in report["parts_ms_mean"].items()),
    ]
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for revision in range(1, 11):
            build_sr(content(revision), [header])
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        lines.append(out.getvalue())
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
