"""Benchmark: ONNX Runtime throughput of the full-size MedImageInsight encoder on a GPU.

Measures the exported classifier (encoder + head, 480 x 480, 3 channels) with the
CUDA and TensorRT execution providers, fp16 (and fp32 on CUDA for reference), at
batch 1, 8 and 32, and sets each figure beside the bound that the encoder's
~625 GFLOPs per image puts on that GPU (peak dense fp16 tensor throughput / 625
GFLOP). Inputs are bound on the device (I/O binding) so the host-to-device copy
of 2.7 MB per image is not counted; ``host_input`` repeats batch 32 through
``session.run`` with host arrays for comparison.

Run on the GPU machine (no network needed: random weights, exported here)::

    python bench/mii_gpu_throughput.py --out bench/results/mii_gpu_throughput.json

or with an exported model: ``--model mii.fp16.onnx``. Needs ``onnxruntime-gpu``
(the ``gpu`` extra) and, for the FLOP count, torch + timm (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GFLOPS_PER_IMAGE = 625.0
#: Dense (no sparsity) fp16/bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets.
PEAK_FP16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
    "T4": 65.0,
}


def gpu_name() -> str:
    """Name of GPU 0 from nvidia-smi ('' when there is none)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def peak_tflops(name: str, override: float | None) -> float | None:
    """Peak dense fp16 TFLOP/s of a GPU by name (longest matching key), or the override."""
    if override:
        return override
    hits = [k for k in PEAK_FP16_TFLOPS if k.lower() in name.lower()]
    return PEAK_FP16_TFLOPS[max(hits, key=len)] if hits else None


def counted_gflops(size: int = 480) -> float:
    """Forward GFLOPs of the full encoder per image, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.mii.network import build_mii_model

    with torch.device("meta"):
        model = build_mii_model("full").eval()
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def export_random(directory: Path) -> dict[str, Path]:
    """Export the full-size classifier with random weights, fp32 and fp16 (no parity check)."""
    import torch

    from models.mii.export import Fp16Graph
    from models.mii.network import build_mii_model, mii_preprocess_spec
    from models.onnx_export import export_onnx

    model = build_mii_model("full").eval()
    spec = mii_preprocess_spec(480)
    paths = {"fp32": directory / "mii-full.onnx", "fp16": directory / "mii-full.fp16.onnx"}
    export_onnx(model, spec, paths["fp32"])
    with torch.no_grad():
        export_onnx(Fp16Graph(model), spec, paths["fp16"])
    return paths


def _session(path: Path, provider: str, cache: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if provider == "TensorrtExecutionProvider":
        shape = "image:{}x3x480x480"
        trt = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_max_workspace_size": 8 << 30,
            "trt_profile_min_shapes": shape.format(1),
            "trt_profile_opt_shapes": shape.format(8),
            "trt_profile_max_shapes": shape.format(32),
        }
        providers: list[Any] = [(provider, trt), "CUDAExecutionProvider"]
    else:
        providers = [provider]
    sess = ort.InferenceSession(str(path), opts, providers=providers)
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} not active (got {sess.get_providers()})")
    return sess


def _measure(sess: Any, batch: int, repeat: int, warmup: int) -> dict[str, float]:
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(0, 1, (batch, 3, 480, 480)).astype(np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for name in ("logits", "embedding"):
        binding.bind_output(name, "cuda", 0)
    for _ in range(warmup):
        sess.run_with_iobinding(binding)
    times = []
    for _ in range(repeat):
        binding.synchronize_inputs()
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "batch": batch,
        "median_ms": med * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "images_per_s": batch / med,
    }


def _host(sess: Any, batch: int, repeat: int) -> dict[str, float]:
    x = np.random.default_rng(0).uniform(0, 1, (batch, 3, 480, 480)).astype(np.float32)
    sess.run(None, {"image": x})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "median_ms": med * 1e3, "images_per_s": batch / med}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="fp16 ONNX model (default: export random weights)")
    p.add_argument("--model-fp32", default=None)
    p.add_argument("--out", default="bench/results/mii_gpu_throughput.json")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the fp16 peak")
    p.add_argument("--providers", default="CUDAExecutionProvider,TensorrtExecutionProvider")
    args = p.parse_args(argv)
    import onnxruntime as ort

    name = gpu_name()
    peak = peak_tflops(name, args.peak_tflops)
    try:
        gflops = counted_gflops()
    except ImportError:
        gflops = None
    record: dict[str, Any] = {
        "gpu": name or None,
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "host": platform.node(),
        "gflops_per_image_issue": GFLOPS_PER_IMAGE,
        "gflops_per_image_counted": gflops,
        "peak_fp16_tflops": peak,
        "bound_images_per_s": (peak * 1e3 / GFLOPS_PER_IMAGE) if peak else None,
        "runs": [],
    }
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        if args.model:
            models = {"fp16": Path(args.model)}
            if args.model_fp32:
                models["fp32"] = Path(args.model_fp32)
        else:
            models = export_random(tmpdir)
        plan = []
        for provider in args.providers.split(","):
            plan.append((provider, "fp16"))
            if provider == "CUDAExecutionProvider" and "fp32" in models:
                plan.append((provider, "fp32"))
        for provider, dtype in plan:
            run: dict[str, Any] = {"provider": provider, "graph": dtype}
            try:
                sess = _session(models[dtype], provider, tmpdir / "trt-cache")
                run["batches"] = [_measure(sess, b, args.repeat, args.warmup) for b in batches]
                run["host_input"] = _host(sess, max(batches), max(3, args.repeat // 4))
            except (RuntimeError, ValueError) as exc:  # provider missing or failing: record it
                run["error"] = str(exc)[:500]
            for b in run.get("batches", []):
                achieved = b["images_per_s"] * GFLOPS_PER_IMAGE / 1e3
                b["achieved_tflops"] = achieved
                b["fraction_of_bound"] = achieved / peak if peak else None
            record["runs"].append(run)
            print(json.dumps(run))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
