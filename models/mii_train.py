"""MedImageInsight classifiers: finetune and probe recipes, export, and their CLI.

Two modes, as compared in the MedImageInsight reference work:

* ``finetune``: the encoder loaded strictly from the checkpoint, stem and first
  stage frozen, AdamW (lr 1e-5 for the encoder, ``head_lr`` for the new linear
  head, weight decay 0.2), linear warm-up then cosine decay, an effective batch
  of 48 by gradient accumulation over micro-batches, mixed precision on GPU
  (bfloat16 where supported, else float16 with a gradient scaler);
* ``probe``: frozen 1024-d embeddings of the train split, six probe families
  tuned by grid search with 5-fold cross-validation grouped by patient
  (:mod:`models.probe`); the best family becomes a torch head exported in the
  same ONNX graph as the encoder.

Both write ``OUT/best.pt`` (``kind: 'mii'``) and ``OUT/summary.json``;
:func:`export_run` turns a run into an ONNX model (plus an fp16 variant for GPU)
with the node's contract and a card that records the backbone, the checkpoint's
SHA-256 and the preprocessing. The encoder is never trained or exported with
random weights: a checkpoint is required.

Entry point: :func:`mii_main` (``triage-model mii ...`` once wired into
:mod:`models.cli`, or ``python -m models.mii_train ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.mii.checkpoint import LoadReport, MiiError, file_sha256, load_mii_checkpoint
from models.mii.export import export_mii_onnx, mii_card
from models.mii.network import MII_VARIANTS, MiiTriageNet, build_mii_model, mii_preprocess_spec
from models.preprocess import PreprocessSpec

__all__ = [
    "MiiConfig",
    "embed_images",
    "export_run",
    "finetune",
    "is_mii_run",
    "load_run",
    "mii_main",
    "probe",
]

logger = logging.getLogger(__name__)

MODES = ("finetune", "probe")


@dataclass
class MiiConfig:
    """A MedImageInsight run (stored in ``best.pt`` and ``summary.json``)."""

    labels: str
    images_root: str
    out_dir: str
    checkpoint: str
    mode: str = "finetune"
    variant: str = "full"
    input_size: int | None = None
    epochs: int = 10
    lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.2
    warmup_epochs: float = 1.0
    batch_size: int = 48
    micro_batch: int = 8
    amp: bool = True
    augment: bool = True
    seed: int = 20261123
    threads: int = 2
    device: str = "auto"
    max_train_images: int | None = None
    max_steps: int | None = None
    probe_families: tuple[str, ...] = field(
        default=("logistic_regression", "svm", "knn", "random_forest", "mlp", "lightgbm")
    )
    small_grid: bool = False
    cv_folds: int = 5
    embed_batch: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size % self.micro_batch:
            raise ValueError("batch_size must be a multiple of micro_batch")
        self.probe_families = tuple(self.probe_families)

    def spec(self) -> PreprocessSpec:
        """MedImageInsight's preprocessing at this run's input size."""
        return mii_preprocess_spec(self.input_size or MII_VARIANTS[self.variant].input_size)

    def torch_device(self) -> torch.device:
        """The device to train on."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def _load_encoder(cfg: MiiConfig) -> tuple[MiiTriageNet, LoadReport]:
    model = build_mii_model(cfg.variant, in_chans=3)
    report = load_mii_checkpoint(model, cfg.checkpoint)
    return model, report


def _records(cfg: MiiConfig, split: str) -> list[Any]:
    from models.data import read_labels

    recs = read_labels(cfg.labels, split)
    if split == "train" and cfg.max_train_images:
        recs = recs[: cfg.max_train_images]
    if not recs:
        raise ValueError(f"{cfg.labels}: no rows in the {split} split")
    return recs


def _autocast(device: torch.device, enabled: bool) -> tuple[Any, torch.dtype | None]:
    if device.type != "cuda" or not enabled:
        return torch.autocast(device_type="cpu", enabled=False), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype), dtype


@torch.no_grad()
def embed_images(
    model: MiiTriageNet,
    x: torch.Tensor,
    *,
    batch: int = 16,
    device: torch.device | None = None,
    amp: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of preprocessed images, in eval mode (float32 numpy)."""
    device = device or torch.device("cpu")
    model = model.eval().to(device)
    logits, embs = [], []
    for i in range(0, len(x), batch):
        ctx, _ = _autocast(device, amp)
        with ctx:
            lo, em = model(x[i : i + batch].to(device))
        logits.append(lo.float().cpu())
        embs.append(em.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(embs).numpy()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def finetune(cfg: MiiConfig) -> dict[str, Any]:
    """Fine-tune the encoder and a linear head; write ``best.pt`` and ``summary.json``.

    Returns
    -------
    dict
        The summary (best validation ROC-AUC, steps, frozen prefixes, checkpoint SHA-256).
    """
    from models.metrics import roc_auc
    from models.preprocess import preprocess_pil
    from models.train import _to_pil, augment, load_images, preprocess_all, seed_everything

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = cfg.torch_device()
    spec = cfg.spec()
    model, report = _load_encoder(cfg)
    frozen = model.freeze_early()
    model.to(device)
    root = Path(cfg.images_root)
    train_recs, val_recs = _records(cfg, "train"), _records(cfg, "val")
    side = max(256, spec.input_size)
    train_imgs = load_images(train_recs, root, max_side=side)
    x_val = preprocess_all(load_images(val_recs, root, max_side=side), spec)
    y_train = np.array([r.label for r in train_recs], dtype=np.float32)
    y_val = np.array([r.label for r in val_recs], dtype=int)

    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    enc_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    base_lrs = [cfg.lr, cfg.head_lr]
    accum = cfg.batch_size // cfg.micro_batch
    steps_per_epoch = max(1, len(train_imgs) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    ctx_dtype = _autocast(device, cfg.amp)[1]
    scaler = torch.amp.GradScaler("cuda", enabled=ctx_dtype == torch.float16)
    rng = np.random.default_rng(cfg.seed)
    step, best_auc, history, t0 = 0, -1.0, [], time.time()
    n_use = steps_per_epoch * cfg.batch_size
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(train_imgs))
        if len(order) < n_use:  # tiny sets: cycle so one step is still a full batch
            order = np.resize(order, n_use)
        losses = []
        for s in range(steps_per_epoch):
            if step >= total:
                break
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * _lr_factor(step, total, warmup)
            opt.zero_grad(set_to_none=True)
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            for m in range(accum):
                part = idx[m * cfg.micro_batch : (m + 1) * cfg.micro_batch]
                imgs = [
                    augment(train_imgs[i], np.random.default_rng((cfg.seed, epoch, int(i))))
                    if cfg.augment
                    else _to_pil(train_imgs[i])
                    for i in part
                ]
                x = torch.from_numpy(np.stack([preprocess_pil(im, spec) for im in imgs])).to(device)
                y = torch.from_numpy(y_train[part]).to(device)
                ctx, _ = _autocast(device, cfg.amp)
                with ctx:
                    logits, _ = model(x)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
                scaler.scale(loss / accum).backward()
                losses.append(float(loss.detach()))
            scaler.step(opt)
            scaler.update()
            step += 1
        val_logits, _ = embed_images(
            model, x_val, batch=cfg.embed_batch, device=device, amp=cfg.amp
        )
        auc = roc_auc(y_val, val_logits) if len(set(y_val)) == 2 else float("nan")
        rec = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "val_auc": auc,
            "elapsed_s": round(time.time() - t0, 1),
        }
        history.append(rec)
        logger.info("finetune %s", json.dumps(rec))
        if not auc <= best_auc:  # first epoch, improvement, or NaN on degenerate val sets
            best_auc = auc
            _save_run(out / "best.pt", cfg, report, model.state_dict(), {"history": history})
        if step >= total:
            break
    summary = {
        "mode": "finetune",
        "config": asdict(cfg),
        "checkpoint_sha256": report.sha256,
        "frozen": frozen,
        "steps": step,
        "accumulation": accum,
        "amp_dtype": str(ctx_dtype) if ctx_dtype else None,
        "best_val_auc": best_auc,
        "history": history,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def probe(cfg: MiiConfig) -> dict[str, Any]:
    """Fit the probes on frozen embeddings; keep the best as the head; write ``best.pt``.

    Returns
    -------
    dict
        The summary (every family's CV ROC-AUC and parameters, the chosen one, val ROC-AUC).
    """
    from models.metrics import roc_auc
    from models.probe import estimator_logits, fit_probes, head_from_estimator
    from models.train import load_images, preprocess_all, seed_everything

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = cfg.torch_device()
    spec = cfg.spec()
    model, report = _load_encoder(cfg)
    root = Path(cfg.images_root)
    side = max(256, spec.input_size)
    emb: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    groups = None
    for split in ("train", "val"):
        recs = _records(cfg, split)
        x = preprocess_all(load_images(recs, root, max_side=side), spec)
        _, emb[split] = embed_images(model, x, batch=cfg.embed_batch, device=device, amp=cfg.amp)
        labels[split] = np.array([r.label for r in recs], dtype=int)
        if split == "train":
            groups = np.array([r.patient_id or r.image for r in recs])
    np.savez_compressed(
        out / "embeddings.npz",
        **{f"{k}_x": v for k, v in emb.items()},
        **{f"{k}_y": v for k, v in labels.items()},
    )
    results = fit_probes(
        emb["train"],
        labels["train"],
        groups,
        families=cfg.probe_families,
        n_splits=cfg.cv_folds,
        seed=cfg.seed,
        small_grid=cfg.small_grid,
    )
    table = []
    for r in results:
        val_logits = estimator_logits(r.estimator, emb["val"])
        val_auc = (
            roc_auc(labels["val"], val_logits) if len(set(labels["val"])) == 2 else float("nan")
        )
        table.append({**r.summary(), "val_roc_auc": val_auc})
    best = results[0]
    model.head = head_from_estimator(best.estimator, emb["train"], labels["train"])
    model.to("cpu").eval()
    with torch.no_grad():
        head_logits = model.head(torch.from_numpy(emb["val"])).numpy()
    head_diff = float(np.max(np.abs(head_logits - estimator_logits(best.estimator, emb["val"]))))
    probe_state = {
        "family": best.family,
        "params": best.params,
        "estimator": pickle.dumps(best.estimator),
        "train_x": emb["train"],
        "train_y": labels["train"],
    }
    _save_run(out / "best.pt", cfg, report, None, {"probe": probe_state, "table": table})
    summary = {
        "mode": "probe",
        "config": asdict(cfg),
        "checkpoint_sha256": report.sha256,
        "cv": f"StratifiedGroupKFold({cfg.cv_folds}) by patient, ROC-AUC",
        "probes": table,
        "chosen": best.summary(),
        "head_vs_sklearn_max_abs_diff_val": head_diff,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _save_run(
    path: Path,
    cfg: MiiConfig,
    report: LoadReport,
    state: dict[str, Any] | None,
    extra: dict[str, Any],
) -> None:
    ckpt = {"kind": "mii", "config": asdict(cfg), "load": asdict(report), "model": state, **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def is_mii_run(path: str | Path) -> bool:
    """Whether ``path`` is the ``best.pt`` of a MedImageInsight run (from its ``summary.json``)."""
    summary = Path(path).with_name("summary.json")
    if not summary.exists():
        return False
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return data.get("mode") in MODES and "checkpoint_sha256" in data


def load_run(path: str | Path) -> tuple[MiiTriageNet, MiiConfig, dict[str, Any], LoadReport]:
    """Rebuild the model of a run's ``best.pt`` in eval mode.

    The encoder is reloaded strictly from the recorded checkpoint (probe runs) or
    from the run's own weights (finetune runs); the checkpoint's SHA-256 must
    still match the recorded one.

    Raises
    ------
    ValueError
        When the file is not a MedImageInsight run or the checkpoint changed.
    """
    from models.probe import head_from_estimator

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("kind") != "mii":
        raise ValueError(f"{path} is not a MedImageInsight run checkpoint")
    cfg = MiiConfig(**ckpt["config"])
    report = LoadReport(**ckpt["load"])
    model = build_mii_model(cfg.variant, in_chans=3)
    if cfg.mode == "probe":
        if file_sha256(cfg.checkpoint) != report.sha256:
            raise ValueError(f"{cfg.checkpoint} changed since the run (sha256 differs)")
        load_mii_checkpoint(model, cfg.checkpoint)
        pr = ckpt["probe"]
        model.head = head_from_estimator(
            pickle.loads(pr["estimator"]), pr["train_x"], pr["train_y"]
        )
    else:
        model.load_state_dict(ckpt["model"], strict=True)
    return model.eval(), cfg, ckpt, report


def export_run(
    run_checkpoint: str | Path,
    out: str | Path,
    *,
    fp16: bool = False,
    name: str = "cxr-triage-mii",
    version: str = "0.1.0",
    opset: int = 17,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export a run to ONNX (and ``<out stem>.fp16.onnx`` with ``fp16``) with embedded cards.

    Returns
    -------
    dict
        ``{"fp32": {...}, "fp16": {...}}``: paths and parity figures.
    """
    from models.card import embed_card

    model, cfg, ckpt, report = load_run(run_checkpoint)
    spec = cfg.spec()
    out = Path(out)
    if cfg.mode == "probe":
        head = {
            "kind": "probe",
            "family": ckpt["probe"]["family"],
            "params": ckpt["probe"]["params"],
            "in_graph": True,
            "table": ckpt.get("table"),
        }
    else:
        head = {"kind": "linear (1 unit, abnormal logit)", "in_graph": True}
    summary_file = Path(run_checkpoint).with_name("summary.json")
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    training = {
        "mode": cfg.mode,
        "config": {
            k: v for k, v in asdict(cfg).items() if k not in ("labels", "images_root", "out_dir")
        },
        "best_val_roc_auc": summary.get("best_val_auc"),
        "steps": summary.get("steps"),
    }
    results: dict[str, Any] = {}
    variants = [("fp32", out, False)] + (
        [("fp16", out.with_name(out.stem + ".fp16.onnx"), True)] if fp16 else []
    )
    for key, path, half in variants:
        res = export_mii_onnx(model, spec, path, fp16=half, opset=opset, atol=atol)
        card = mii_card(
            name=name,
            version=version,
            variant=cfg.variant,
            spec=spec,
            load=report,
            mode=cfg.mode,
            head=head,
            export={"opset": opset, **res, "path": Path(res["path"]).name},
            model=model,
            training=training,
            training_data={"labels_file": Path(cfg.labels).name, "trained_on_split": "train"},
        )
        embed_card(path, card)
        results[key] = res
    return results


# -- CLI ------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True)
    p.add_argument("--images-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", required=True, help="MedImageInsight .safetensors")
    p.add_argument("--variant", default="full", help="full (the real encoder) or tiny")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--seed", type=int, default=20261123)


def build_parser() -> argparse.ArgumentParser:
    """Parser of ``triage-model mii``."""
    p = argparse.ArgumentParser(prog="triage-model mii", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="fine-tune the encoder (stem and stage 0 frozen)")
    _common(f)
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--lr", type=float, default=1e-5)
    f.add_argument("--head-lr", type=float, default=1e-3)
    f.add_argument("--weight-decay", type=float, default=0.2)
    f.add_argument("--warmup-epochs", type=float, default=1.0)
    f.add_argument("--batch-size", type=int, default=48)
    f.add_argument("--micro-batch", type=int, default=8)
    f.add_argument("--max-steps", type=int, default=None)
    f.add_argument("--no-augment", action="store_true")
    pr = sub.add_parser("probe", help="probes on frozen embeddings, grouped 5-fold grid search")
    _common(pr)
    pr.add_argument("--families", default=None, help="comma list (default: all six)")
    pr.add_argument("--small-grid", action="store_true")
    pr.add_argument("--cv-folds", type=int, default=5)
    e = sub.add_parser("export", help="export a run's best.pt to ONNX (+ fp16 variant)")
    e.add_argument("run_checkpoint")
    e.add_argument("--out", required=True)
    e.add_argument("--fp16", action="store_true")
    e.add_argument("--name", default="cxr-triage-mii")
    e.add_argument("--version", default="0.1.0")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--atol", type=float, default=1e-4)
    return p


def _config(args: argparse.Namespace) -> MiiConfig:
    kw: dict[str, Any] = {
        "labels": args.labels,
        "images_root": args.images_root,
        "out_dir": args.out,
        "checkpoint": args.checkpoint,
        "mode": args.command,
        "variant": args.variant,
        "input_size": args.input_size,
        "threads": args.threads,
        "device": args.device,
        "max_train_images": args.max_train_images,
        "amp": not args.no_amp,
        "seed": args.seed,
    }
    if args.command == "finetune":
        kw.update(
            epochs=args.epochs,
            lr=args.lr,
            head_lr=args.head_lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size,
            micro_batch=args.micro_batch,
            max_steps=args.max_steps,
            augment=not args.no_augment,
        )
    else:
        if args.families:
            kw["probe_families"] = tuple(s.strip() for s in args.families.split(","))
        kw.update(small_grid=args.small_grid, cv_folds=args.cv_folds)
    return MiiConfig(**kw)


def mii_main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``triage-model mii {finetune,probe,export} ...``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "export":
            res = export_run(
                args.run_checkpoint,
                args.out,
                fp16=args.fp16,
                name=args.name,
                version=args.version,
                opset=args.opset,
                atol=args.atol,
            )
        else:
            cfg = _config(args)
            res = finetune(cfg) if cfg.mode == "finetune" else probe(cfg)
            res = {k: res[k] for k in res if k not in ("config", "history")}
    except (MiiError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"triage-model mii {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(mii_main())
