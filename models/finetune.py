"""Training that starts from the node's current model (``triage-model train --init``).

Two ways, chosen by what ``--init`` names:

- **an ONNX file** (the registry's champion, the shipped default: the source weights
  are not at hand): a new head on the model's ``embedding`` output and its own logit,
  a logistic regression fitted on the ``train`` split (L2 strength chosen on
  validation), folded into a copy of the graph as a MatMul + Add whose result becomes
  the new ``logits`` output. The backbone is the parent's, unchanged.
- **a torch run directory or checkpoint** (``best.pt``/``last.pt`` of
  ``triage-model train``): fine-tuning of every weight from the checkpoint, with the
  parent's recipe at a lower learning rate, then ONNX export with its parity check.

Either way, temperature and operating points (``balanced``: maximum Youden J;
``high_sensitivity``: highest threshold with the target sensitivity, capped at the
balanced one) are fitted on the validation split, or, when it holds fewer than
:data:`MIN_VAL_PER_CLASS` images of a class (a small site's first export), on
out-of-fold predictions of a 5-fold cross-validation over train and val; never on test.

The card keeps the provenance chain: ``training.parent`` (name, version, weights
sha256 of the model it started from), ``training.lineage`` (the parent's own chain),
and ``training_data.sources`` (each labels file with its counts and, for a node
export, its ``export.json``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.cam_output import CAM_OUTPUT, cam_card_entry
from models.card import ModelCard, embed_card
from models.data import Record, read_labels
from models.evaluate import fit_calibration
from models.metrics import roc_auc

__all__ = ["MIN_VAL_PER_CLASS", "FinetuneConfig", "add_head", "finetune"]

logger = logging.getLogger(__name__)

#: Fewer validation images than this in a class: calibrate on cross-validation instead.
MIN_VAL_PER_CLASS = 5
_C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass
class FinetuneConfig:
    """A training run that starts from a model.

    Attributes
    ----------
    init : str
        ONNX file, or torch run directory / checkpoint.
    labels, images_root : str
        The (exported) labels file and its image folder.
    out_dir : str
    name, version : str
        Of the new model.
    target_sensitivity : float
    epochs, lr : int, float
        Torch fine-tuning only.
    threads : int
    seed : int
    """

    init: str
    labels: str
    images_root: str
    out_dir: str
    name: str = "cxr-triage-site"
    version: str = "0.1.0"
    target_sensitivity: float = 0.98
    epochs: int = 5
    lr: float = 2e-4
    threads: int = 1
    seed: int = 20261129


def _features(clf: Any, records: list[Record], root: Path) -> np.ndarray:
    from models.preprocess import preprocess_file

    spec = clf.card.preprocess_spec
    rows = []
    for start in range(0, len(records), 32):
        batch = np.stack(
            [preprocess_file(root / r.image, spec) for r in records[start : start + 32]]
        )
        logits, emb = clf.predict(batch)
        rows.append(np.concatenate([emb, np.asarray(logits, np.float64)[:, None]], axis=1))
    return np.concatenate(rows, axis=0)


def _fit_head(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    """Logistic regression on standardised features, folded back to raw features."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-8] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit((x - mean) / std, y)
    w = model.coef_.ravel() / std
    b = float(model.intercept_[0] - np.sum(model.coef_.ravel() * mean / std))
    return w, b


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def add_head(
    parent: str | Path, out: str | Path, weight: np.ndarray, bias: float
) -> tuple[int, int] | None:
    """Write a copy of ``parent`` whose ``logits`` is ``[embedding, parent logit] @ w + b``.

    The new logit is linear in the parent's pooled features and logit, so a parent with
    a class-activation map gets the map of the new logit (:mod:`models.cam_output`); the
    parent's own map, no longer the logit's, is dropped.

    Parameters
    ----------
    parent : str or Path
        ONNX model with ``embedding`` ``(N, D)`` and ``logits`` ``(N,)`` outputs.
    out : str or Path
    weight : numpy.ndarray
        ``D + 1`` weights (the last for the parent's logit).
    bias : float

    Returns
    -------
    tuple of int or None
        ``(h, w)`` of the new model's ``cam`` output; None when it has none.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.cam_output import CamNotDerivable, add_cam_output, cam_shape, remove_output

    proto = onnx.load(str(parent))
    had_cam = CAM_OUTPUT in {o.name for o in proto.graph.output}
    graph = proto.graph
    for node in graph.node:
        node.output[:] = ["parent_logits" if o == "logits" else o for o in node.output]
        node.input[:] = ["parent_logits" if i == "logits" else i for i in node.input]
    w = np.asarray(weight, np.float32).reshape(-1, 1)
    graph.initializer.extend(
        [
            numpy_helper.from_array(w, "site_head_w"),
            numpy_helper.from_array(np.array([bias], np.float32), "site_head_b"),
            numpy_helper.from_array(np.array([1], np.int64), "site_head_ax1"),
            numpy_helper.from_array(np.array([-1], np.int64), "site_head_flat"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Unsqueeze", ["parent_logits", "site_head_ax1"], ["site_head_pl"]),
            helper.make_node("Concat", ["embedding", "site_head_pl"], ["site_head_x"], axis=1),
            helper.make_node("MatMul", ["site_head_x", "site_head_w"], ["site_head_mm"]),
            helper.make_node("Reshape", ["site_head_mm", "site_head_flat"], ["site_head_z"]),
            helper.make_node("Add", ["site_head_z", "site_head_b"], ["logits"]),
        ]
    )
    outputs = [o for o in graph.output if o.name != "logits"]
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"])])
    graph.output.extend(outputs)
    onnx.checker.check_model(proto)
    if had_cam:
        try:
            proto = add_cam_output(proto)
        except CamNotDerivable as exc:
            logger.warning("%s: the new head has no class-activation map (%s)", parent, exc)
            proto = remove_output(proto, CAM_OUTPUT)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return cam_shape(proto)


def _source(labels: Path, records: list[Record]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        split = counts.setdefault(r.split or "none", {"normal": 0, "abnormal": 0})
        split["abnormal" if r.label else "normal"] += 1
    entry: dict[str, Any] = {"labels": str(labels.resolve()), "counts": counts}
    manifest = labels.parent / "export.json"
    if manifest.is_file():
        entry["export"] = json.loads(manifest.read_text(encoding="utf-8"))
    return entry


def _provenance(
    parent: ModelCard, labels: Path, records: list[Record], method: str, extra: dict[str, Any]
) -> dict[str, Any]:
    lineage = list(parent.training.get("lineage", []))
    lineage.append({"name": parent.name, "version": parent.version, "sha256": parent.sha256})
    return {
        "training": {
            "method": method,
            "parent": {"name": parent.name, "version": parent.version, "sha256": parent.sha256},
            "lineage": lineage,
            **extra,
        },
        "training_data": {
            "sources": [_source(labels, records)],
            "parent_training_data": parent.training_data,
        },
    }


def _head_from_onnx(cfg: FinetuneConfig, out: Path) -> dict[str, Any]:
    from models.runtime import Classifier

    clf = Classifier.load(cfg.init, ["CPUExecutionProvider"], max_batch=32)
    if not clf._has_embedding:
        raise ValueError(f"{cfg.init} has no 'embedding' output: a new head needs one")
    labels = Path(cfg.labels)
    root = Path(cfg.images_root)
    records = read_labels(labels)
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    if not train:
        raise ValueError(f"{labels}: no rows in the train split")
    y_train = np.array([r.label for r in train])
    y_val = np.array([r.label for r in val], dtype=int)
    x_train = _features(clf, train, root)
    x_val = _features(clf, val, root) if val else np.zeros((0, x_train.shape[1]))
    use_val = min(int((y_val == 0).sum()), int((y_val == 1).sum())) >= MIN_VAL_PER_CLASS
    if len(set(y_train.tolist())) < 2:
        raise ValueError("the train split needs both normal and abnormal images")
    scores: dict[float, float] = {}
    if use_val:
        fitted_on = "val"
        y_cal = y_val
        for c in _C_GRID:
            w, b = _fit_head(x_train, y_train, c, cfg.seed)
            scores[c] = roc_auc(y_val, x_val @ w + b)
        best_c = max(_C_GRID, key=lambda c: (scores[c], -c))
        w, b = _fit_head(x_train, y_train, best_c, cfg.seed)
        z_cal = x_val @ w + b
    else:
        fitted_on = "5-fold cross-validation over train+val (val too small)"
        x_all = np.concatenate([x_train, x_val])
        y_cal = np.concatenate([y_train, y_val]).astype(int)
        k = int(min(5, (y_cal == 0).sum(), (y_cal == 1).sum()))
        if k < 2:
            raise ValueError("too few labelled images: each class needs at least 2")
        folds = _folds(len(y_cal), k, cfg.seed)
        oof: dict[float, np.ndarray] = {}
        for c in _C_GRID:
            z = np.zeros(len(y_cal))
            for fold in folds:
                mask = np.ones(len(y_cal), bool)
                mask[fold] = False
                if len(set(y_cal[mask].tolist())) < 2:
                    z[fold] = 0.0
                    continue
                w, b = _fit_head(x_all[mask], y_cal[mask], c, cfg.seed)
                z[fold] = x_all[fold] @ w + b
            oof[c] = z
            scores[c] = roc_auc(y_cal, z)
        best_c = max(_C_GRID, key=lambda c: (scores[c], -c))
        w, b = _fit_head(x_all, y_cal, best_c, cfg.seed)
        z_cal = oof[best_c]
    fit = fit_calibration(y_cal, z_cal, split=fitted_on, target_sensitivity=cfg.target_sensitivity)
    calibration, points = fit.summary, fit.points
    parent_auc = roc_auc(y_cal, (x_val if use_val else np.concatenate([x_train, x_val]))[:, -1])
    model_path = out / f"{cfg.name}.onnx"
    cam = add_head(cfg.init, model_path, w, b)
    parent = clf.card
    outputs = {k: v for k, v in parent.outputs.items() if k != CAM_OUTPUT}
    card = parent.model_copy(
        update={
            "outputs": {**outputs, **({CAM_OUTPUT: cam_card_entry(cam)} if cam else {})},
            "name": cfg.name,
            "version": cfg.version,
            "calibration": calibration,
            "operating_points": points,
            "architecture": {
                **parent.architecture,
                "head": "logistic regression on [embedding, parent logit] (site head)",
            },
            "metrics": {
                "validation": {
                    "fitted_on": fitted_on,
                    "roc_auc": calibration["val_roc_auc"],
                    "parent_roc_auc": parent_auc,
                    "l2_c": best_c,
                    "roc_auc_by_c": {str(c): s for c, s in scores.items()},
                }
            },
            "subgroups": {},
            **_provenance(
                parent,
                labels,
                records,
                "new head on the parent's embedding (ONNX parent)",
                {"n_train": len(train), "n_val": len(val)},
            ),
        }
    )
    card = embed_card(model_path, card)
    return {
        "model": str(model_path),
        "sha256": card.sha256,
        "method": "head",
        "fitted_on": fitted_on,
        "val_roc_auc": calibration["val_roc_auc"],
        "parent_val_roc_auc": parent_auc,
        "operating_points": {k: v["threshold"] for k, v in points.items()},
    }


def _finetune_checkpoint(cfg: FinetuneConfig, out: Path) -> dict[str, Any]:
    """Fine-tune every weight of a torch checkpoint, export, calibrate on val."""
    import dataclasses

    import torch

    from models.evaluate import calibrate_model
    from models.export import export_checkpoint
    from models.train import TrainConfig, load_checkpoint_model, train

    init = Path(cfg.init)
    ckpt_path = init / "best.pt" if init.is_dir() else init
    model, parent_cfg, ckpt = load_checkpoint_model(ckpt_path)
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    tcfg = TrainConfig(
        **{
            **dataclasses.asdict(parent_cfg),
            "labels": cfg.labels,
            "images_root": cfg.images_root,
            "out_dir": str(run),
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "warmup_epochs": 0.0,
            "patience": cfg.epochs,
            "threads": cfg.threads,
            "seed": cfg.seed,
            "max_minutes": None,
        }
    )
    # Start "resumed" from the parent's weights with a fresh optimiser and schedule.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=tcfg.weight_decay)
    torch.save(
        {
            "model": ckpt["model"],
            "train_model": ckpt.get("train_model", ckpt["model"]),
            "optimizer": opt.state_dict(),
            "state": {
                "epoch": 0,
                "best_auc": -1.0,
                "best_epoch": -1,
                "history": [],
                "elapsed_s": 0.0,
            },
            "torch_rng": torch.get_rng_state(),
            "config": dataclasses.asdict(tcfg),
            "ema_updates": 0,
        },
        run / "last.pt",
    )
    summary = train(tcfg, resume=True)
    model_path = out / f"{cfg.name}.onnx"
    export_checkpoint(run / "best.pt", model_path, name=cfg.name, version=cfg.version)
    card = calibrate_model(
        model_path,
        labels=cfg.labels,
        images_root=cfg.images_root,
        split="val",
        target_sensitivity=cfg.target_sensitivity,
    )
    from models.card import read_card

    parent_card = ModelCard(
        name=str(ckpt_path.parent.name), version="checkpoint", sha256=_file_sha(ckpt_path)
    )
    parent_onnx = init / "model.onnx" if init.is_dir() else None
    if parent_onnx is not None and parent_onnx.is_file():
        parent_card = read_card(parent_onnx)
    records = read_labels(cfg.labels)
    card = embed_card(
        model_path,
        card.model_copy(
            update=_provenance(
                parent_card,
                Path(cfg.labels),
                records,
                "fine-tuning of every weight (torch parent)",
                {
                    "checkpoint": str(ckpt_path),
                    "best_val_auc": summary["best_val_auc"],
                    "epochs_run": summary["epochs_run"],
                },
            )
        ),
    )
    return {
        "model": str(model_path),
        "sha256": card.sha256,
        "method": "finetune",
        "val_roc_auc": summary["best_val_auc"],
        "operating_points": {k: v["threshold"] for k, v in card.operating_points.items()},
    }


def _file_sha(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train a new model from ``cfg.init`` on ``cfg.labels``; write it under ``out_dir``.

    Parameters
    ----------
    cfg : FinetuneConfig

    Returns
    -------
    dict
        Summary (also ``out_dir/summary.json``): model path, weights sha256, method,
        validation ROC-AUC (and the parent's, for a head), thresholds.

    Raises
    ------
    ValueError
        Unusable data (a class missing, no embedding output).
    FileNotFoundError
        ``init`` does not exist.
    """
    init = Path(cfg.init)
    if not init.exists():
        raise FileNotFoundError(f"--init {init}: no such file or directory")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if init.suffix == ".onnx":
        summary = _head_from_onnx(cfg, out)
    else:
        summary = _finetune_checkpoint(cfg, out)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
