"""Where the CPU of one triaged study goes, stage by stage (the floor of a burst).

Runs the inference worker's own code in this process, without Celery or a network: N
copies of a real radiograph (default ``RG1_J2KI.dcm``, 1955x1841 JPEG 2000) are
ingested into a fresh SQLite node, made stable, and triaged as the inference tasks do
(:func:`triage.pipeline.triage_batch`, ``--batch-studies`` at a time), after one
warm-up study. Each stage function of :mod:`triage.pipeline` is wrapped with a CPU
clock (``time.process_time``: this process, all its threads) for the run; the decode
child's CPU is read from /proc. Then every SR is sent to a dcmtk ``storescp`` with
:func:`triage.delivery.store_file` (one association each, as the delivery task does),
timing our side's CPU.

CPU rather than wall time: on a machine shared with other work it is what a study
costs whatever the load (wall time is ``time_to_triage.py``'s job).

Usage::

    python bench/triage_cpu.py --studies 40 --batch-studies 8
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SOURCE = (REPO / ".." / "shared" / "data" / "dicom" / "real" / "RG1_J2KI.dcm").resolve()

#: The stage functions of triage.pipeline that are timed, with what they do.
STAGES = {
    "claim_revision": "claim the task's revision (one transaction)",
    "claim_waiting": "claim the other revisions of a batch",
    "_read": "read the headers, select the images",
    "_decode": "worker side of the decode: request, wait, store the preview",
    "_infer": "the classifier (ONNX Runtime), all images of the batch",
    "_score": "study score, operating point",
    "build_sr": "build the SR (highdicom)",
    "write_sr": "write the SR (encode, fsync, rename, fsync of the directory)",
    "_previous_srs": "find the earlier SR of the study",
    "save_result": "record the result, images, outbox rows (one transaction)",
    "_pending_deliveries": "list the outbox rows to send",
    "_write_heatmaps": "store the heatmaps of an abnormal study",
    "_done": "a revision found done (the batch's other tasks)",
}


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.process_time() - start

    return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; print a table and optionally write JSON."""
    import pydicom
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    import triage.pipeline as pipeline
    from bench.time_to_triage import Pacs
    from tests.support.ingest import ingest_file
    from triage.delivery import store_file
    from triage.guarded_decode import get_decoder
    from triage.inference import get_classifier
    from worklist.core.clock import utcnow
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.migrate import upgrade
    from worklist.core.settings import load_settings
    from worklist.stability import mark_stable_studies
    from worklist.tables import TriageResult

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--batch-studies", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.source.exists():
        parser.error(f"{args.source} not found (the shared data set is needed)")

    work = Path(tempfile.mkdtemp(prefix="triage-cpu-"))
    pacs = Pacs(work / "pacs")
    try:
        settings = load_settings(
            data_dir=work / "node", destinations=f"PACS@127.0.0.1:{pacs.port}", min_free_mb=0
        )
        upgrade(settings.effective_database_url)
        engine = make_engine(settings.effective_database_url)
        factory = make_session_factory(engine)
        for i in range(args.studies + 1):
            ds = pydicom.dcmread(args.source)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = work / "in" / f"{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path)
            ingest_file(factory, path, work / "spool")
        with factory.begin() as session:
            later = utcnow() + timedelta(seconds=1)
            warm, *handoffs = mark_stable_studies(session, quiet_seconds=0.0, now=later)
        classifier = get_classifier(settings)
        pipeline.triage_study(factory, settings, classifier, warm.study_id, warm.revision)
        decoder = get_decoder(settings)
        assert decoder.pid is not None

        totals: dict[str, float] = defaultdict(float)
        originals = {name: getattr(pipeline, name) for name in STAGES}
        for name, fn in originals.items():
            setattr(pipeline, name, _timed(totals, name, fn))
        child0, cpu0, wall0 = _cpu_of(decoder.pid), time.process_time(), time.perf_counter()
        try:
            for handoff in handoffs:
                pipeline.triage_batch(
                    factory,
                    settings,
                    classifier,
                    handoff.study_id,
                    handoff.revision,
                    batch_studies=args.batch_studies,
                )
        finally:
            for name, fn in originals.items():
                setattr(pipeline, name, fn)
        worker_cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        child_cpu = _cpu_of(decoder.pid) - child0

        with factory() as session:
            srs = [p for p in session.scalars(select(TriageResult.sr_path)) if p]
        cpu0 = time.process_time()
        for sr in srs[1:]:
            store_file(sr, settings.destinations[0], calling_ae=settings.ae_title)
        deliver_cpu = time.process_time() - cpu0
        engine.dispose()
    finally:
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)

    n = args.studies
    per = {name: round(totals[name] * 1000 / n, 2) for name in STAGES}
    report: dict[str, Any] = {
        "source": str(args.source),
        "studies": n,
        "batch_studies": args.batch_studies,
        "inference_threads": settings.inference_threads,
        "worker_cpu_ms": round(worker_cpu * 1000 / n, 1),
        "worker_wall_ms": round(wall * 1000 / n, 1),
        "decode_child_cpu_ms": round(child_cpu * 1000 / n, 1),
        "store_file_cpu_ms": round(deliver_cpu * 1000 / max(1, len(srs) - 1), 1),
        "stages_cpu_ms": per,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    lines = [
        f"{n} studies of {args.source.name}, batches of {args.batch_studies}; CPU ms per study",
        f"  inference worker process      {report['worker_cpu_ms']:6.1f}"
        f"   (wall {report['worker_wall_ms']:.1f})",
    ]
    for name, value in sorted(per.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:26s} {value:6.1f}   {STAGES[name]}")
    lines += [
        f"  decode child                   {report['decode_child_cpu_ms']:6.1f}"
        "   (read, frame check, decode, preprocess, preview PNG)",
        f"  store_file (delivery, our side){report['store_file_cpu_ms']:6.1f}"
        "   (read the SR, associate, C-STORE, release)",
        f"  load average {report['load_average']}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
