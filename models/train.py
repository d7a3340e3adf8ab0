"""Training recipe (imports torch; never imported by the workers).

* timm backbone created without downloads (:mod:`models.backbones`), trained
  from scratch on the ``train`` split;
* images decoded once and kept in memory as uint8; each epoch they are
  augmented (crop/zoom, rotation, flip, gamma, noise, blur, down-and-up
  sampling, JPEG recompression) and then go through the *same*
  :func:`models.preprocess.preprocess_pil` the workers use;
* several labelled sources at once (:mod:`models.sources`), drawn with
  per-source weights and optionally view-balanced within each label;
* early stopping on validation ROC-AUC (the mean of the per-source ROC-AUCs
  when there are several sources), fixed seeds, tqdm progress bars,
  resumable checkpoints (``last.pt`` every epoch, ``best.pt`` on improvement);
* cosine learning-rate decay over ``epochs``; with ``max_minutes`` the decay
  follows whichever of steps or wall time is further along, so a run on a
  busy machine still ends annealed within its time budget (exact step
  reproducibility then needs ``max_minutes=None``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from models.backbones import BACKBONES, build_model
from models.data import Record
from models.metrics import brier_score, roc_auc, sigmoid
from models.preprocess import PreprocessSpec, pil_to_array, preprocess_pil
from models.sources import DataSource, read_sources, sampling_weights

__all__ = ["TrainConfig", "augment", "load_checkpoint_model", "load_images", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    labels: str
    images_root: str
    out_dir: str
    backbone: str = "resnet10t"
    input_size: int = 128
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    patience: int = 8
    seed: int = 20261123
    threads: int = 1
    workers: int = 1
    max_minutes: float | None = None
    max_train_images: int | None = None
    augment: bool = True
    ema_decay: float | None = 0.995
    preprocess: dict[str, Any] = field(default_factory=dict)
    #: several sources (``DataSource.to_dict()``); empty: ``labels``/``images_root`` alone
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: within each source and label, every view gets the same share of the draws
    balance_view: bool = False
    #: training draws per epoch (default: the number of training images)
    epoch_size: int | None = None
    #: probability of histogram equalisation / random percentile windowing per draw
    histeq_p: float = 0.0
    #: longest side images are kept at in memory (>= input_size)
    load_side: int = 256
    #: ONNX model of the same backbone whose weights start the run
    init_from: str | None = None
    #: weight of a distillation loss towards the ``init_from`` model's outputs on the
    #: training images of ``distill_population`` (learning without forgetting); 0: off
    distill_weight: float = 0.0
    distill_population: str = "pediatric"

    def data_sources(self) -> list[DataSource]:
        """The run's sources (one when ``sources`` is empty)."""
        if self.sources:
            return [DataSource(**d) for d in self.sources]
        return [DataSource(self.labels, self.images_root)]

    def spec(self) -> PreprocessSpec:
        """The preprocessing spec of this run."""
        base = {"input_size": self.input_size}
        base.update(self.preprocess)
        return PreprocessSpec.from_dict(base)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_images(
    records: list[Record], images_root: Path | list[Path], max_side: int = 256
) -> list[np.ndarray]:
    """Decode every image once (grey, uint8/uint16), shrinking larger ones to ``max_side``.

    ``images_root`` is one folder, or one folder per record.
    """
    roots = images_root if isinstance(images_root, list) else [images_root] * len(records)
    out = []
    for rec, root in tqdm(
        list(zip(records, roots, strict=True)), desc="decode", unit="img", leave=False
    ):
        with Image.open(Path(root) / rec.image) as img:
            img.load()
            if max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            arr = pil_to_array(img)
        if arr.dtype != np.uint8 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        out.append(arr)
    return out


def _to_pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr if arr.dtype == np.uint8 else arr.astype(np.float32))


def augment(arr: np.ndarray, rng: np.random.Generator, histeq_p: float = 0.0) -> Image.Image:
    """Random hospital-like perturbation of one uint8 grey image.

    Geometry: random crop (scale 0.7-1, aspect 0.85-1.18) or zoom-out with a
    black border, rotation up to 8 degrees, horizontal flip. Intensity: gamma
    0.6-1.6, contrast/brightness (undone by percentile windowing but changes
    clipping), Gaussian noise. Quality: Gaussian blur, down-sampling to 40-128
    px and back, JPEG recompression at quality 10-85. Exposure (with
    probability ``histeq_p``): histogram equalisation or a random percentile
    window, so that the intensity histogram is no shortcut to the label.
    """
    img = Image.fromarray(arr) if arr.dtype == np.uint8 else _to_pil(arr).convert("L")
    if histeq_p and rng.random() < histeq_p:
        img = _exposure(img, rng)
    w, h = img.size
    if rng.random() < 0.8:
        scale = rng.uniform(0.7, 1.0)
        ratio = math.exp(rng.uniform(math.log(0.85), math.log(1.18)))
        cw = min(w, round(math.sqrt(scale * w * h * ratio)))
        ch = min(h, round(math.sqrt(scale * w * h / ratio)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
    elif rng.random() < 0.5:
        pad = int(rng.uniform(0.03, 0.15) * max(w, h))
        canvas = Image.new("L", (w + 2 * pad, h + 2 * pad), int(rng.choice([0, 0, 255])))
        canvas.paste(img, (pad, pad))
        img = canvas
    if rng.random() < 0.7:
        img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR, fillcolor=0)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    if rng.random() < 0.4:
        side = int(rng.integers(40, 129))
        size = img.size
        img = img.resize((side, max(8, int(side * size[1] / size[0]))), Image.Resampling.BILINEAR)
        img = img.resize(size, Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    if rng.random() < 0.8:
        x = np.power(np.clip(x, 0, 1), float(math.exp(rng.uniform(math.log(0.6), math.log(1.6)))))
    if rng.random() < 0.5:
        x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    img = Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.5:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(10, 86)))
        buf.seek(0)
        img = Image.open(buf)
        img.load()
    return img


def _exposure(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Histogram equalisation (half the time) or a random percentile window."""
    from PIL import ImageOps

    if rng.random() < 0.5:
        return ImageOps.equalize(img)
    x = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(x, [rng.uniform(0, 15), rng.uniform(85, 100)])
    y = np.clip((x - lo) / max(hi - lo, 1.0), 0, 1)
    return Image.fromarray((y * 255 + 0.5).astype(np.uint8))


class _TrainSet(Dataset):
    def __init__(
        self,
        images: list[np.ndarray],
        labels: np.ndarray,
        spec: PreprocessSpec,
        seed: int,
        aug: bool,
        histeq_p: float = 0.0,
        flags: np.ndarray | None = None,
    ):
        self.images, self.labels, self.spec, self.seed, self.aug = images, labels, spec, seed, aug
        self.histeq_p = histeq_p
        self.flags = np.zeros(len(images), np.float32) if flags is None else flags
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        img = augment(self.images[i], rng, self.histeq_p) if self.aug else _to_pil(self.images[i])
        x = preprocess_pil(img, self.spec)
        return torch.from_numpy(x), torch.tensor(float(self.labels[i])), torch.tensor(self.flags[i])


def preprocess_all(images: list[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """Deterministic preprocessing of in-memory images (validation/test)."""
    return torch.from_numpy(np.stack([preprocess_pil(_to_pil(a), spec) for a in images]))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits of a model on a preprocessed tensor, in eval mode."""
    model.eval()
    outs = [model(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy().astype(np.float64)


class _Ema:
    """Exponential moving average of the weights (buffers copied), with warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema_state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                ema_state[k].copy_(v)


def _lr_at(step: float, total: float, warmup: float, base: float, time_frac: float = 0.0) -> float:
    """Linear warm-up then cosine decay; progress is the larger of steps and time used."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = max((step - warmup) / max(1.0, total - warmup), time_frac)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def load_checkpoint_model(path: str | Path) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint (``best.pt`` or ``last.pt``) in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**ckpt["config"])
    model = build_model(cfg.backbone, in_chans=cfg.spec().channels)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train a classifier; return the summary written to ``out_dir/summary.json``.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    resume : bool
        Continue from ``out_dir/last.pt`` when it exists.
    """
    if cfg.backbone not in BACKBONES:
        raise KeyError(f"unknown backbone {cfg.backbone!r}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    spec = cfg.spec()
    sources = cfg.data_sources()
    train_items = read_sources(sources, "train")
    val_items = read_sources(sources, "val")
    if cfg.max_train_images:  # the first rows of every source
        train_items = [
            it
            for src in sources
            for it in [t for t in train_items if t.source == src][: cfg.max_train_images]
        ]
    if not train_items or not val_items:
        raise ValueError("the labels file(s) need rows in the train and val splits")
    train_recs = [it.record for it in train_items]
    val_recs = [it.record for it in val_items]
    t0 = time.time()
    side = max(cfg.load_side, spec.input_size)
    train_imgs = load_images(train_recs, [Path(it.source.images_root) for it in train_items], side)
    val_imgs = load_images(val_recs, [Path(it.source.images_root) for it in val_items], side)
    y_train = np.array([r.label for r in train_recs], dtype=np.float32)
    y_val = np.array([r.label for r in val_recs], dtype=int)
    val_source = np.array([it.source.name for it in val_items])
    x_val = preprocess_all(val_imgs, spec)
    logger.info(
        "decoded %d train / %d val images in %.1fs",
        len(train_imgs),
        len(val_imgs),
        time.time() - t0,
    )

    model = build_model(cfg.backbone, in_chans=spec.channels)
    if cfg.init_from and not resume:
        from models.warmstart import init_from_onnx

        init_from_onnx(model, cfg.init_from, x_val[:: max(1, len(x_val) // 128)][:128])
    teacher = None
    if cfg.distill_weight > 0:
        if not cfg.init_from:
            raise ValueError("distillation needs init_from (the model to stay close to)")
        from models.warmstart import init_from_onnx

        teacher = build_model(cfg.backbone, in_chans=spec.channels)
        init_from_onnx(teacher, cfg.init_from, x_val[:: max(1, len(x_val) // 128)][:128])
        teacher.eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)
    ema = _Ema(model, cfg.ema_decay) if cfg.ema_decay else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {
        "epoch": 0,
        "best_auc": -1.0,
        "best_epoch": -1,
        "history": [],
        "elapsed_s": 0.0,
    }
    last = out / "last.pt"
    if resume and last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["train_model"] if "train_model" in ckpt else ckpt["model"])
        if ema is not None and "model" in ckpt:
            ema.module.load_state_dict(ckpt["model"])
            ema.updates = ckpt.get("ema_updates", 0)
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        logger.info("resumed from %s at epoch %d", last, state["epoch"])

    flags = np.array(
        [it.population == cfg.distill_population for it in train_items], dtype=np.float32
    )
    ds = _TrainSet(train_imgs, y_train, spec, cfg.seed, cfg.augment, cfg.histeq_p, flags)
    gen = torch.Generator().manual_seed(cfg.seed)
    weighted = len(sources) > 1 or cfg.balance_view or cfg.epoch_size
    sampler = (
        WeightedRandomSampler(
            sampling_weights(train_items, balance_view=cfg.balance_view).tolist(),
            num_samples=cfg.epoch_size or len(train_items),
            replacement=True,
            generator=gen,
        )
        if weighted
        else None
    )
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.workers,
        generator=gen,
        persistent_workers=False,
    )
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    started = time.time() - state["elapsed_s"]
    stop_reason = "max epochs"
    for epoch in range(state["epoch"], cfg.epochs):
        ds.epoch = epoch
        gen.manual_seed(cfg.seed + epoch)
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for i, (x, y, flag) in enumerate(bar):
            if cfg.max_minutes and time.time() - started >= 60 * cfg.max_minutes:
                break
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                frac = (
                    ((time.time() - started) / (60 * cfg.max_minutes)) if cfg.max_minutes else 0.0
                )
                g["lr"] = _lr_at(step, total, warm, cfg.lr, frac)
            logits, _ = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            if teacher is not None and flag.sum() > 0:
                with torch.no_grad():
                    target = torch.sigmoid(teacher(x)[0])
                kd = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, target, reduction="none"
                )
                loss = loss + cfg.distill_weight * (kd * flag).sum() / flag.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        eval_model = ema.module if ema is not None else model
        val_logits = predict_logits(eval_model, x_val)
        per_source = {
            name: roc_auc(y_val[val_source == name], val_logits[val_source == name])
            for name in dict.fromkeys(val_source.tolist())
        }
        # several sources: the mean of their ROC-AUCs (the pooled one mixes populations)
        auc = (
            float(np.mean(list(per_source.values())))
            if len(per_source) > 1
            else roc_auc(y_val, val_logits)
        )
        brier = brier_score(y_val, sigmoid(val_logits))
        elapsed = time.time() - started
        rec = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_auc": auc,
            "val_brier": brier,
            "elapsed_s": round(elapsed, 1),
        }
        if len(per_source) > 1:
            rec["val_auc_per_source"] = per_source
        state["history"].append(rec)
        state["epoch"] = epoch + 1
        state["elapsed_s"] = elapsed
        improved = auc > state["best_auc"]
        if improved:
            state["best_auc"], state["best_epoch"] = auc, epoch + 1
        # "model" holds the weights that are evaluated and exported (the EMA when enabled)
        ckpt = {
            "model": eval_model.state_dict(),
            "optimizer": opt.state_dict(),
            "state": state,
            "config": asdict(cfg),
            "torch_rng": torch.get_rng_state(),
        }
        if ema is not None:
            ckpt["train_model"] = model.state_dict()
            ckpt["ema_updates"] = ema.updates
        torch.save(ckpt, out / "last.pt.tmp")
        (out / "last.pt.tmp").replace(last)
        if improved:
            torch.save(ckpt, out / "best.pt")
        logger.info(
            "epoch %d: loss %.4f val AUC %.4f Brier %.4f (%.0fs)%s",
            epoch + 1,
            rec["train_loss"],
            auc,
            brier,
            elapsed,
            " *" if improved else "",
        )
        tqdm.write(json.dumps(rec))
        if epoch + 1 - state["best_epoch"] >= cfg.patience:
            stop_reason = f"early stop: no val AUC gain for {cfg.patience} epochs"
            break
        if cfg.max_minutes and elapsed / 60 >= cfg.max_minutes:
            stop_reason = f"time budget of {cfg.max_minutes} min reached"
            break
    summary = {
        "config": asdict(cfg),
        "best_val_auc": state["best_auc"],
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(state["elapsed_s"], 1),
        "stop_reason": stop_reason,
        "history": state["history"],
        "n_train": len(train_recs),
        "n_val": len(val_recs),
        "n_per_source": {
            s.name: {
                "train": sum(it.source == s for it in train_items),
                "val": sum(it.source == s for it in val_items),
            }
            for s in sources
        },
        "torch_threads": cfg.threads,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
