"""triage-model train --init: a new head on an ONNX model's embedding, with the card's
provenance chain; the result is a model the registry accepts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.card import read_card
from models.cli import main
from models.runtime import Classifier
from tests.support.tiny_model import build_tiny_model


def _dataset(root: Path, n: int = 40, seed: int = 0) -> Path:
    """Abnormal images carry a bright block, which after the percentile window darkens
    the rest: the parent (logit = 4 x mean) ranks them the wrong way round."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        label = i % 2
        img = rng.integers(60, 120, (64, 64)).astype(np.uint8)
        if label:
            r, c = rng.integers(0, 56, 2)
            img[r : r + 8, c : c + 8] = 255
        name = f"images/{i}.png"
        Image.fromarray(img).save(root / name)
        split = "train" if i < 24 else "val" if i < 36 else "test"
        rows.append(
            {
                "image": name,
                "label": "abnormal" if label else "normal",
                "findings": "",
                "patient_id": f"p{i}",
                "age": "50",
                "sex": "F",
                "view": "PA",
                "source": "test",
                "split": split,
            }
        )
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "export.json").write_text(json.dumps({"export_id": "abc123", "images": n}))
    return root / "labels.csv"


def test_head_on_embedding_keeps_the_provenance_chain(tmp_path: Path) -> None:
    parent = tmp_path / "parent.onnx"
    parent_card = build_tiny_model(parent, input_size=64, name="parent", weight=4.0)
    labels = _dataset(tmp_path / "ds")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--init",
            str(parent),
            "--labels",
            str(labels),
            "--images-root",
            str(tmp_path / "ds"),
            "--out",
            str(out),
            "--name",
            "site-model",
            "--version",
            "1.0.0",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    model = Path(summary["model"])
    card = read_card(model)
    assert card.name == "site-model" and card.sha256 == summary["sha256"] != parent_card.sha256
    assert card.training["parent"]["sha256"] == parent_card.sha256
    assert card.training["lineage"][-1]["name"] == "parent"
    source = card.training_data["sources"][0]
    assert source["export"]["export_id"] == "abc123"
    assert source["counts"]["train"] == {"normal": 12, "abnormal": 12}
    assert set(card.operating_points) == {"balanced", "high_sensitivity"}
    assert card.operating_points["balanced"]["fitted_on"] == "val"
    # The head learnt what the parent could not see; the graph still has its embedding.
    assert summary["val_roc_auc"] > 0.9 and summary["parent_val_roc_auc"] < 0.8
    clf = Classifier.load(model)
    from models.preprocess import PreprocessSpec, preprocess_file

    spec = PreprocessSpec(input_size=64)
    x = np.stack([preprocess_file(tmp_path / "ds" / f"images/{i}.png", spec) for i in (36, 37)])
    logits, emb = clf.predict(x)
    assert emb.shape == (2, 2) and logits[1] > logits[0]


def test_small_validation_split_falls_back_to_cross_validation(tmp_path: Path) -> None:
    from models.finetune import FinetuneConfig, finetune

    parent = tmp_path / "parent.onnx"
    build_tiny_model(parent, input_size=64, name="parent")
    labels = _dataset(tmp_path / "ds", n=26)  # val holds 2 images
    summary = finetune(
        FinetuneConfig(
            init=str(parent),
            labels=str(labels),
            images_root=str(tmp_path / "ds"),
            out_dir=str(tmp_path / "r"),
        )
    )
    assert "cross-validation" in summary["fitted_on"]
    card = read_card(summary["model"])
    assert "cross-validation" in card.operating_points["balanced"]["fitted_on"]


def test_missing_init_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "train",
            "--init",
            str(tmp_path / "nope.onnx"),
            "--labels",
            "x.csv",
            "--images-root",
            ".",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_fine_tune_of_a_torch_run_keeps_its_lineage(tmp_path: Path) -> None:
    """A torch run of triage-model train is fine-tuned (every weight), exported with its
    parity check, calibrated on val, and its card names the checkpoint it came from."""
    pytest.importorskip("torch")
    from models.finetune import FinetuneConfig, finetune
    from models.train import TrainConfig, train

    labels = _dataset(tmp_path / "ds", n=40)
    parent_run = tmp_path / "parent-run"
    train(
        TrainConfig(
            labels=str(labels),
            images_root=str(tmp_path / "ds"),
            out_dir=str(parent_run),
            backbone="plaincnn8",
            input_size=64,
            epochs=1,
            batch_size=8,
            workers=0,
            augment=False,
            ema_decay=None,
        )
    )
    summary = finetune(
        FinetuneConfig(
            init=str(parent_run),
            labels=str(labels),
            images_root=str(tmp_path / "ds"),
            out_dir=str(tmp_path / "ft"),
            epochs=1,
            name="site-ft",
        )
    )
    assert summary["method"] == "finetune"
    card = read_card(summary["model"])
    assert card.name == "site-ft" and card.training["checkpoint"].endswith("best.pt")
    assert card.training["parent"]["sha256"]  # the checkpoint file's hash
    assert card.operating_points["balanced"]["fitted_on"] == "val"
    assert card.training_data["sources"][0]["export"]["export_id"] == "abc123"
    Classifier.load(summary["model"])
