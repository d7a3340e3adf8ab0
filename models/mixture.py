"""Two experts and a gate in one graph: the pediatric model and a model trained on both sources.

``logit = g(x) * pediatric(x) + (1 - g(x)) * general(x)`` where ``g`` is a logistic
regression on both models' embeddings that tells the pediatric source's
images from the others (fitted on the training split). The graph keeps the model
contract (``image`` -> ``logits``, ``embedding``: the general model's), so the node
needs nothing new. The gate learns what the pediatric *source* looks like, not
age: a child's radiograph from another hospital may be judged by the general
expert (the card says so).

``python -m models.mixture --pediatric PED.onnx --general RUN/best.pt --out RUN2``
writes ``RUN2/best.pt`` (backbone ``gated_plaincnn8``) and ``RUN2/summary.json``,
which ``triage-model export`` turns into ONNX like any run. Imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["GatedPair", "build_gated_run", "main"]


class GatedPair(nn.Module):
    """Pediatric expert, general expert and a linear gate on both embeddings."""

    def __init__(self, pediatric: nn.Module, general: nn.Module, dim: int) -> None:
        super().__init__()
        self.pediatric = pediatric
        self.general = general
        self.gate = nn.Linear(2 * dim, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp, ep = self.pediatric(image)
        lg, emb = self.general(image)
        g = torch.sigmoid(self.gate(torch.cat([ep, emb], dim=1))).squeeze(-1)
        return g * lp + (1 - g) * lg, emb


def build_gated(*, in_chans: int = 1, drop: float = 0.0) -> nn.Module:
    """An untrained :class:`GatedPair` of two ``plaincnn8`` classifiers (backbone registry)."""
    from models.backbones import build_model

    ped = build_model("plaincnn8", in_chans=in_chans, drop=drop)
    gen = build_model("plaincnn8", in_chans=in_chans, drop=drop)
    return GatedPair(ped, gen, gen.head.in_features)


@torch.no_grad()
def _embed(model: nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch])[1] for i in range(0, len(x), batch)]).numpy()


def _both(pair: GatedPair, x: torch.Tensor) -> np.ndarray:
    return np.concatenate([_embed(pair.pediatric, x), _embed(pair.general, x)], axis=1)


def build_gated_run(
    pediatric_onnx: str | Path, general_checkpoint: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Fit the gate on the general run's training images and save the pair as a run.

    Returns
    -------
    dict
        The run's summary (also written to ``out_dir/summary.json``), with the
        gate's accuracy on the validation images of each source.
    """
    from sklearn.linear_model import LogisticRegression

    from models.sources import read_sources
    from models.train import load_checkpoint_model, load_images, preprocess_all
    from models.warmstart import init_from_onnx

    t0 = time.time()
    general, cfg, ckpt = load_checkpoint_model(general_checkpoint)
    spec = cfg.spec()
    sources = cfg.data_sources()
    ped_sources = [s for s in sources if s.population == "pediatric"]
    if not ped_sources:
        raise ValueError("the general run has no pediatric source to gate on")

    def tensors(split: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        items = read_sources(sources, split)
        roots = [Path(it.source.images_root) for it in items]
        imgs = load_images([it.record for it in items], roots, max(cfg.load_side, spec.input_size))
        is_ped = np.array([it.source.population == "pediatric" for it in items], dtype=int)
        names = np.array([it.source.name for it in items])
        return preprocess_all(imgs, spec), is_ped, names

    x_tr, d_tr, _ = tensors("train")
    x_va, d_va, n_va = tensors("val")
    pair = GatedPair(
        __import__("models.backbones", fromlist=["build_model"]).build_model(
            "plaincnn8", in_chans=spec.channels
        ),
        general,
        general.head.in_features,
    )
    init_from_onnx(pair.pediatric, pediatric_onnx, x_va[:: max(1, len(x_va) // 128)][:128])
    gate = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")
    gate.fit(_both(pair, x_tr), d_tr)
    with torch.no_grad():
        pair.gate.weight.copy_(torch.from_numpy(gate.coef_.astype(np.float32)))
        pair.gate.bias.copy_(torch.from_numpy(gate.intercept_.astype(np.float32)))
    pair.eval()
    with torch.no_grad():
        g_va = torch.sigmoid(pair.gate(torch.from_numpy(_both(pair, x_va)))).squeeze(-1).numpy()
    gate_report = {
        name: {
            "n": int((n_va == name).sum()),
            "mean_gate_pediatric": float(g_va[n_va == name].mean()),
            "accuracy": float(((g_va[n_va == name] >= 0.5) == d_va[n_va == name]).mean()),
        }
        for name in dict.fromkeys(n_va.tolist())
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    new_cfg = {**asdict(cfg), "backbone": "gated_plaincnn8", "out_dir": str(out)}
    state = {**ckpt["state"]}
    torch.save({"model": pair.state_dict(), "state": state, "config": new_cfg}, out / "best.pt")
    summary = {
        "config": new_cfg,
        "best_val_auc": state["best_auc"],
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(state["elapsed_s"], 1),
        "stop_reason": f"gated pair of {Path(pediatric_onnx).name} and {general_checkpoint}",
        "history": state["history"],
        "gate": {
            "features": "both experts' embeddings",
            "fitted_on": "train (pediatric source vs the others)",
            "val": gate_report,
            "seconds": round(time.time() - t0, 1),
        },
        "pediatric_expert": str(pediatric_onnx),
        "general_expert": str(general_checkpoint),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m models.mixture", description=__doc__)
    p.add_argument("--pediatric", required=True, help="the pediatric expert (ONNX, plaincnn8)")
    p.add_argument("--general", required=True, help="best.pt of a run on several sources")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    summary = build_gated_run(args.pediatric, args.general, args.out)
    sys.stdout.write(json.dumps(summary["gate"], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
