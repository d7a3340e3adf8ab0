"""Several labelled sources: parsing, sampling weights, per-population operating points,
and train -> export -> calibrate -> evaluate end to end on a few images of each source.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from models.card import ModelCard, population_for_age
from models.data import Record
from models.sources import DataSource, SourceRecord, parse_source, resolve_sources, sampling_weights


def test_parse_source() -> None:
    assert parse_source("a/labels.csv:a") == DataSource("a/labels.csv", "a", 1.0, "adult")
    assert parse_source("l.csv:r:2.5:pediatric") == DataSource("l.csv", "r", 2.5, "pediatric")
    for bad in ("only", "l.csv:r:x", "l.csv:r:0", "l.csv:r:1:teen", ":r"):
        with pytest.raises(ValueError):
            parse_source(bad)
    assert resolve_sources(None, "l.csv", "r") == [DataSource("l.csv", "r")]
    with pytest.raises(ValueError, match="together"):
        resolve_sources(None, "l.csv", None)
    with pytest.raises(ValueError, match="share"):
        resolve_sources(["a.csv:x/r", "b.csv:y/r"])


def _items(src: DataSource, rows: list[tuple[int, str]]) -> list[SourceRecord]:
    return [
        SourceRecord(src, Record(f"{i}.png", label, view=view))
        for i, (label, view) in enumerate(rows)
    ]


def test_sampling_weights_source_share_and_view_balance() -> None:
    ped = DataSource("p.csv", "p", 1.0, "pediatric")
    adult = DataSource("a.csv", "a", 3.0)
    # adult: normals 3 AP + 1 PA, abnormals 1 AP + 3 PA (the view tells the label)
    items = _items(ped, [(0, ""), (1, ""), (1, "")]) + _items(
        adult, [(0, "AP")] * 3 + [(0, "PA")] + [(1, "AP")] + [(1, "PA")] * 3
    )
    w = sampling_weights(items, balance_view=False)
    assert w.sum() == pytest.approx(1.0)
    assert w[:3].sum() == pytest.approx(0.25) and w[3:].sum() == pytest.approx(0.75)
    wb = sampling_weights(items, balance_view=True)
    a = wb[3:]
    views = ["AP"] * 3 + ["PA"] + ["AP"] + ["PA"] * 3
    labels = [0] * 4 + [1] * 4
    for label in (0, 1):
        share = {
            v: sum(a[i] for i in range(8) if labels[i] == label and views[i] == v)
            for v in ("AP", "PA")
        }
        assert share["AP"] == pytest.approx(share["PA"])  # the view no longer tells the label
    assert a.sum() == pytest.approx(0.75) and wb[:3].sum() == pytest.approx(0.25)


def test_population_operating_points() -> None:
    assert population_for_age(6) == "pediatric"
    assert population_for_age(17.9) == "pediatric"
    assert population_for_age(18) == "adult" and population_for_age(None) == "adult"
    assert population_for_age(float("nan")) == "adult"
    card = ModelCard(
        name="m",
        version="1",
        operating_points={"balanced": {"threshold": 0.5}},
        population_operating_points={
            "pediatric": {"balanced": {"threshold": 0.3}},
            "adult": {"balanced": {"threshold": 0.7}},
        },
    )
    assert card.operating_point_for(6) == ("pediatric", 0.3)
    assert card.operating_point_for(40) == ("adult", 0.7)
    assert card.operating_point_for(None) == ("adult", 0.7)
    plain = ModelCard(name="m", version="1", operating_points={"balanced": {"threshold": 0.5}})
    assert plain.operating_point_for(6) == ("all", 0.5)
    with pytest.raises(ValueError):
        ModelCard(name="m", version="1", population_operating_points={"teen": {}})


torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")
pytest.importorskip("sklearn")


def _subset(labels: Path, out: Path, per: dict[str, int]) -> Path:
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    keep = []
    for split, n in per.items():
        for label in ("normal", "abnormal"):
            keep += [r for r in rows if r["split"] == split and r["label"] == label][: n // 2]
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return out


def test_multi_source_train_export_calibrate_evaluate(
    cxr_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    from models.cli import main
    from models.runtime import Classifier

    nih = data_dir / "cxr-nih512"
    if not (nih / "labels.csv").exists():
        pytest.skip(f"adult data not found at {nih}")
    per = {"train": 12, "val": 24, "test": 12}
    ped_csv = _subset(cxr_dir / "labels.csv", tmp_path / "ped.csv", per)
    adult_csv = _subset(nih / "labels.csv", tmp_path / "adult.csv", per)
    data = ["--data", f"{ped_csv}:{cxr_dir}:1:pediatric", "--data", f"{adult_csv}:{nih}:2"]
    run = tmp_path / "run"
    args = ["train", *data, "--out", str(run), "--backbone", "plaincnn8", "--input-size", "32"]
    args += ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--balance-view"]
    args += ["--histeq-p", "0.5", "--epoch-size", "16"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_per_source"] == {
        "cxr": {"train": 12, "val": 24},
        "cxr-nih512": {"train": 12, "val": 24},
    }
    assert set(summary["history"][0]["val_auc_per_source"]) == {"cxr", "cxr-nih512"}

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run / "best.pt"), "--out", str(onnx_path), "--name", "tiny"]) == 0
    assert main(["calibrate", str(onnx_path), *data]) == 0
    card = Classifier.load(onnx_path).card
    names = [s["name"] for s in card.training_data["sources"]]
    assert names == ["cxr", "cxr-nih512"]
    adult = card.training_data["sources"][1]
    assert adult["weight"] == 2.0 and adult["splits"]["train"] == {
        "n": 12,
        "normal": 6,
        "abnormal": 6,
    }
    assert card.calibration["fitted_on"] == "val"
    assert card.calibration["pooled_sources"] == ["cxr", "cxr-nih512"]
    assert set(card.calibration["population_check"]["populations"]) == {"pediatric", "adult"}

    out = tmp_path / "eval"
    args = ["evaluate", str(onnx_path), *data, "--out", str(out), "--split", "test"]
    args += [
        "--variants",
        "original,histeq",
        "--n-boot",
        "20",
        "--checkpoint",
        str(run / "best.pt"),
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sources"]) == {"cxr", "cxr-nih512"}
    nih_m = metrics["sources"]["cxr-nih512"]
    assert 0 <= nih_m["histogram_baseline"]["roc_auc"]["value"] <= 1
    assert "histeq" in nih_m and "roc_auc" in nih_m
    report = (out / "report.md").read_text()
    assert "histogram baseline" in report and "cxr-nih512" in report
    for f in (
        "cxr/report.md",
        "cxr-nih512/report.md",
        "cxr-nih512/predictions_histeq.csv",
        "roc.png",
    ):
        assert (out / f).exists(), f
    probs = np.array(
        [float(r["probability"]) for r in csv.DictReader((out / "cxr/predictions.csv").open())]
    )
    assert ((probs >= 0) & (probs <= 1)).all() and len(probs) == 12
