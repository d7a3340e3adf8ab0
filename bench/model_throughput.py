"""Benchmark: preprocessing of real DICOMs and ONNX Runtime inference of the default model.

Run: ``python bench/model_throughput.py [--model PATH]
[--providers CUDAExecutionProvider,CPUExecutionProvider]``
Data is read from ``<repo>/../shared/data``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from models.preprocess import preprocess_file
from models.runtime import Classifier, default_model_path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(default_model_path()))
    p.add_argument("--providers", default=None)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    clf = Classifier.load(
        args.model, providers=args.providers.split(",") if args.providers else None
    )
    spec = clf.card.preprocess_spec
    print(f"model {clf.card.name} {clf.card.version} on {clf.active_providers}")
    for path in sorted((DATA / "dicom" / "real").glob("*.dcm")):
        preprocess_file(path, spec)
        ts = _time(lambda p=path: preprocess_file(p, spec), args.repeat)
        print(f"preprocess {path.name:45s} median {statistics.median(ts) * 1000:7.1f} ms")
    for n in (1, 8, 32, 128):
        x = np.random.default_rng(0).normal(size=(n, *spec.shape)).astype(np.float32)
        clf.predict_logits(x)
        ts = _time(lambda b=x: clf.predict_logits(b), args.repeat)
        med = statistics.median(ts)
        print(f"inference batch {n:4d}: median {med * 1000:8.1f} ms, {n / med:8.1f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
