"""MedImageInsight: strict loading, finetune and probe recipes, export to the node's contract.

Everything runs on the width-reduced DaViT with MedImageInsight's structure
(``variant='tiny'``) and synthetic checkpoints written with MedImageInsight's key
names (random weights, no download). The full-size export is behind ``slow``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.backbones import BACKBONES, build_model
from models.mii.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    file_sha256,
    load_mii_checkpoint,
    mii_to_timm_key,
    timm_to_mii_key,
)
from models.mii.export import export_mii_onnx
from models.mii.network import MiiTriageNet, build_mii_model, mii_preprocess_spec
from tests.support.mii import write_synthetic_mii_checkpoint

QKV = "image_encoder.blocks.2.1.spatial_block.window_attn.fn.qkv.weight"


@pytest.fixture(scope="module")
def source() -> MiiTriageNet:
    torch.manual_seed(0)
    return build_mii_model("tiny").eval()


@pytest.fixture(scope="module")
def ckpt(source: MiiTriageNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mii_checkpoint(
        source, tmp_path_factory.mktemp("mii") / "mii.safetensors"
    )


def _same_encoder(a: MiiTriageNet, b: MiiTriageNet) -> None:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- specs ----------------------------------------------------------------------------------


def test_backbone_specs() -> None:
    mii = BACKBONES["medimageinsight"]
    assert mii.timm_name == "davit_huge_fl" and mii.default_input_size == 480
    assert mii.preprocess["low"] == 1.0 and mii.preprocess["high"] == 99.0
    assert mii.preprocess["keep_aspect"] is False and mii.preprocess["channels"] == 3
    assert BACKBONES["default"].timm_name == "mobilenetv3_small_100"
    model = build_model("medimageinsight_tiny", in_chans=1)
    assert isinstance(model, MiiTriageNet)
    logits, emb = model.eval()(torch.rand(2, 1, 96, 96))  # grey repeated in the graph
    assert logits.shape == (2,) and emb.shape == (2, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_preprocess_spec_is_microsofts() -> None:
    spec = mii_preprocess_spec()
    assert (spec.input_size, spec.channels, spec.window) == (480, 3, "percentile")
    assert (spec.low, spec.high, spec.keep_aspect, spec.mean, spec.std) == (1, 99, False, 0, 1)


# -- key mapping and loading ----------------------------------------------------------------


def test_key_mapping_is_a_bijection(source: MiiTriageNet) -> None:
    names = [f"backbone.{k}" for k in source.backbone.state_dict()]
    mii = [timm_to_mii_key(n) for n in names]
    assert len(set(mii)) == len(names)
    assert all(k.startswith("image_encoder.") or k == "image_projection" for k in mii)
    assert [mii_to_timm_key(k) for k in mii] == names
    assert "image_encoder.convs.0.proj.weight" in mii
    assert "image_encoder.norms.weight" in mii
    assert mii_to_timm_key(QKV) == "backbone.trunk.stages.2.blocks.1.spatial_block.attn.qkv.weight"


def test_strict_round_trip(source: MiiTriageNet, ckpt: Path) -> None:
    model = build_mii_model("tiny")
    report = load_mii_checkpoint(model, ckpt)
    _same_encoder(source, model)
    assert report.sha256 == file_sha256(ckpt)
    assert report.n_image_tensors == len(model.backbone.state_dict())
    assert report.n_ignored_tensors == 3  # the text tower
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(source(x)[1], model.eval()(x)[1])


def test_older_names_load(source: MiiTriageNet, tmp_path: Path) -> None:
    path = write_synthetic_mii_checkpoint(source, tmp_path / "old.safetensors", prefix="visual.")
    model = build_mii_model("tiny")
    assert load_mii_checkpoint(model, path).prefix == "visual."
    _same_encoder(source, model)


def test_renamed_key_fails_loudly(source: MiiTriageNet, tmp_path: Path) -> None:
    bad = QKV.replace("qkv", "qkv_renamed")
    path = write_synthetic_mii_checkpoint(source, tmp_path / "r.safetensors", rename={QKV: bad})
    with pytest.raises(CheckpointFormatError, match="qkv_renamed"):
        load_mii_checkpoint(build_mii_model("tiny"), path)


def test_missing_key_is_named(source: MiiTriageNet, tmp_path: Path) -> None:
    path = write_synthetic_mii_checkpoint(source, tmp_path / "m.safetensors", drop=(QKV,))
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 .*window_attn\.fn\.qkv\.weight"):
        load_mii_checkpoint(build_mii_model("tiny"), path)


def test_unknown_prefix_raises(source: MiiTriageNet, tmp_path: Path) -> None:
    path = write_synthetic_mii_checkpoint(
        source, tmp_path / "u.safetensors", rename={QKV: "encoder.blocks.2.1.qkv.weight"}
    )
    with pytest.raises(CheckpointFormatError, match="unknown prefix.*encoder.blocks"):
        load_mii_checkpoint(build_mii_model("tiny"), path)
    path = write_synthetic_mii_checkpoint(source, tmp_path / "p.safetensors", prefix="model.")
    with pytest.raises(CheckpointFormatError, match=r"unknown prefix.*'model\.blocks"):
        load_mii_checkpoint(build_mii_model("tiny"), path)
    from safetensors.torch import save_file

    save_file({"lang_projection": torch.zeros(2, 2)}, str(tmp_path / "text.safetensors"))
    with pytest.raises(CheckpointFormatError, match="no MedImageInsight image tensors"):
        load_mii_checkpoint(build_mii_model("tiny"), tmp_path / "text.safetensors")


def test_wrong_width_and_non_safetensors(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointMismatchError, match="shape"):
        # the tiny checkpoint into a model with other widths
        from models.mii.network import MII_VARIANTS, MiiVariant

        wider = MiiVariant({**MII_VARIANTS["tiny"].davit_kwargs, "embed_dims": (32, 64, 128, 256)})
        load_mii_checkpoint(MiiTriageNet(wider), ckpt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"PK\x03\x04 not safetensors")
    with pytest.raises(CheckpointFormatError, match="safetensors"):
        load_mii_checkpoint(build_mii_model("tiny"), junk)


# -- recipes and export ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 train + 8 val synthetic grey images, one per patient, half 'abnormal' (a bright blob)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        label = i % 2
        img = rng.normal(100, 20, (120, 100)).clip(0, 255)
        if label:
            img[30:70, 20:60] += 80
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"{i}.png")
        split = "train" if i < 24 else "val"
        rows.append([f"{i}.png", ["normal", "abnormal"][label], f"p{i}", split])
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient_id", "split"])
        w.writerows(rows)
    return labels, root


def _cfg(dataset: tuple[Path, Path], ckpt: Path, out: Path, mode: str, **kw: object):
    from models.mii_train import MiiConfig

    labels, root = dataset
    return MiiConfig(
        labels=str(labels),
        images_root=str(root),
        out_dir=str(out),
        checkpoint=str(ckpt),
        mode=mode,
        variant="tiny",
        threads=1,
        **kw,
    )


def test_finetune_one_step(dataset, ckpt: Path, tmp_path: Path, source: MiiTriageNet) -> None:
    from models.mii_train import finetune, load_run

    summary = finetune(_cfg(dataset, ckpt, tmp_path, "finetune", epochs=1, max_steps=1))
    assert summary["steps"] == 1 and summary["accumulation"] == 6  # 48 = 6 x 8
    assert summary["checkpoint_sha256"] == file_sha256(ckpt)
    model, _, _, _ = load_run(tmp_path / "best.pt")
    before, after = source.state_dict(), model.state_dict()
    assert torch.equal(
        before["backbone.trunk.stem.conv.weight"], after["backbone.trunk.stem.conv.weight"]
    )
    assert torch.equal(
        before["backbone.trunk.stages.0.blocks.0.spatial_block.attn.qkv.weight"],
        after["backbone.trunk.stages.0.blocks.0.spatial_block.attn.qkv.weight"],
    )
    assert not torch.equal(
        before["backbone.trunk.stages.3.blocks.0.channel_block.mlp.fc1.weight"],
        after["backbone.trunk.stages.3.blocks.0.channel_block.mlp.fc1.weight"],
    )


def test_probe_fit_and_export(dataset, ckpt: Path, tmp_path: Path) -> None:
    from models.card import read_card
    from models.mii_train import export_run, probe
    from models.preprocess import preprocess_file
    from models.runtime import Classifier

    summary = probe(_cfg(dataset, ckpt, tmp_path, "probe", small_grid=True))
    assert {p["family"] for p in summary["probes"]} == {
        "logistic_regression",
        "svm",
        "knn",
        "random_forest",
        "mlp",
        "lightgbm",
    }
    assert summary["head_vs_sklearn_max_abs_diff_val"] < 1e-3
    out = tmp_path / "mii-probe.onnx"
    res = export_run(tmp_path / "best.pt", out)
    assert res["fp32"]["max_abs_diff_logits"] <= 1e-4
    card = read_card(out)
    assert card.architecture["backbone"] == "medimageinsight"
    assert card.architecture["checkpoint_sha256"] == file_sha256(ckpt)
    assert card.architecture["head"]["family"] == summary["chosen"]["family"]
    clf = Classifier.load(out)
    x = np.stack([preprocess_file(dataset[1] / f"{i}.png", card.preprocess_spec) for i in range(3)])
    assert x.shape == (3, 3, 96, 96)
    assert clf.embed(x).shape == (3, 64) and clf.predict_logits(x).shape == (3,)


def test_finetune_export_fp32_and_fp16(dataset, ckpt: Path, tmp_path: Path) -> None:
    from models.card import read_card
    from models.mii_train import export_run, finetune
    from models.runtime import Classifier

    finetune(_cfg(dataset, ckpt, tmp_path, "finetune", epochs=1, max_steps=1, augment=False))
    out = tmp_path / "mii.onnx"
    res = export_run(tmp_path / "best.pt", out, fp16=True)
    assert res["fp32"]["dtype"] == "float32" and res["fp16"]["dtype"] == "float16"
    card = read_card(out)
    pre = card.preprocessing
    assert (pre["low"], pre["high"], pre["keep_aspect"], pre["channels"]) == (1.0, 99.0, False, 3)
    assert pre["channel_mean"] == [0.485, 0.456, 0.406] and pre["normalisation"] == "in_graph"
    assert card.architecture["checkpoint"]["sha256"] == file_sha256(ckpt)
    half = tmp_path / "mii.fp16.onnx"
    assert read_card(half).training["export"]["dtype"] == "float16"
    x = np.random.default_rng(1).uniform(0, 1, (4, 3, 96, 96)).astype(np.float32)
    a, b = Classifier.load(out), Classifier.load(half)
    np.testing.assert_allclose(a.embed(x), b.embed(x), atol=2e-2)


@pytest.mark.parametrize("family", ["random_forest", "knn", "lightgbm", "svm"])
def test_probe_heads_in_fp16_graph(source: MiiTriageNet, tmp_path: Path, family: str) -> None:
    """Probe heads stay float32 inside the fp16 graph: finite logits close to the fp32 graph."""
    import copy

    import onnxruntime as ort
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    from models.probe import head_from_estimator

    est = {
        "random_forest": RandomForestClassifier(n_estimators=5, random_state=0),
        "knn": KNeighborsClassifier(3),
        "lightgbm": LGBMClassifier(n_estimators=5, verbose=-1, min_child_samples=2),
        "svm": SVC(kernel="rbf"),
    }[family]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        emb = source(torch.from_numpy(x))[1].numpy()
    y = np.arange(16) % 2
    est.fit(emb, y)
    model = copy.deepcopy(source)
    model.head = head_from_estimator(est, emb, y)
    spec = mii_preprocess_spec(96)
    res = export_mii_onnx(model, spec, tmp_path / "h.fp16.onnx", fp16=True)
    assert res["dtype"] == "float16"
    sess = ort.InferenceSession(str(tmp_path / "h.fp16.onnx"), providers=["CPUExecutionProvider"])
    logits, _ = sess.run(["logits", "embedding"], {"image": x[:4]})
    assert np.all(np.isfinite(logits))


def test_cli_train_routes_medimageinsight(dataset, ckpt: Path, tmp_path: Path) -> None:
    from models.cli import main

    labels, root = dataset
    rc = main(
        [
            "train",
            "--labels",
            str(labels),
            "--images-root",
            str(root),
            "--out",
            str(tmp_path),
            "--backbone",
            "medimageinsight_tiny",
            "--mii-checkpoint",
            str(ckpt),
            "--mii-mode",
            "probe",
        ]
    )
    assert rc == 0 and (tmp_path / "best.pt").exists()
    out = tmp_path / "cli.onnx"
    assert main(["export", str(tmp_path / "best.pt"), "--out", str(out), "--fp16"]) == 0
    assert out.exists() and (tmp_path / "cli.fp16.onnx").exists()


@pytest.mark.slow
def test_full_size_export(tmp_path: Path) -> None:
    """The real-size encoder (random weights, a synthetic checkpoint): load, export, parity."""
    model = build_mii_model("full")
    n = sum(p.numel() for p in model.backbone.parameters())
    assert 330e6 < n < 400e6, n
    path = write_synthetic_mii_checkpoint(model, tmp_path / "full.safetensors", text_tensors=False)
    fresh = build_mii_model("full")
    load_mii_checkpoint(fresh, path)
    del model
    res = export_mii_onnx(fresh, mii_preprocess_spec(480), tmp_path / "full.onnx", atol=1e-3)
    assert res["max_abs_diff_embedding"] <= 1e-3


@pytest.mark.slow
def test_full_size_fp16_export(tmp_path: Path) -> None:
    """The real-size encoder exported as the fp16 GPU variant; parity against fp32 torch on CPU."""
    model = build_mii_model("full")
    res = export_mii_onnx(model, mii_preprocess_spec(480), tmp_path / "full.fp16.onnx", fp16=True)
    assert res["dtype"] == "float16"
    assert (tmp_path / "full.fp16.onnx").stat().st_size < 0.8e9  # ~725 MB of fp16 weights
