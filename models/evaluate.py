"""Calibration on validation data and evaluation reports (no torch).

``calibrate_model`` fits the temperature and the operating points on one split
(``val``; it refuses ``test``) and writes them into the model card.
``evaluate_model`` scores any labels.csv of the project's form and writes
``metrics.json``, ``predictions.csv`` (image,label,probability), ``report.md``
and ROC / precision-recall / calibration plots.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from models.card import ModelCard, embed_card
from models.data import LABELS, Record, read_labels
from models.degrade import VARIANT_DESCRIPTIONS, apply_variant
from models.demographics import age_band
from models.extras import MissingExtra, missing_extra_line
from models.metrics import (
    average_precision,
    bootstrap_ci,
    brier_score,
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    operating_point_balanced,
    operating_point_for_sensitivity,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    threshold_metrics,
)
from models.preprocess import PreprocessError, PreprocessSpec, preprocess_file
from models.runtime import Classifier

__all__ = [
    "calibrate_model",
    "evaluate_model",
    "CalibrationFit",
    "fit_calibration",
    "fit_operating_points",
    "refuse_test_split",
    "score_records",
    "subgroup_metrics",
    "summarize_labels",
]

logger = logging.getLogger(__name__)

MISSING = "missing"


def _attributes(rec: Record) -> dict[str, str]:
    sex = (rec.sex or "").strip().upper()
    sex = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(sex, sex or MISSING)
    return {
        "sex": sex,
        "age_band": age_band(rec.age),
        "view": (rec.view or MISSING).upper() if rec.view else MISSING,
    }


def _load_image_for_variant(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


def score_records(
    clf: Classifier,
    records: Sequence[Record],
    images_root: str | Path,
    *,
    variant: str = "original",
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Raw logits for the records (NaN where an image cannot be preprocessed).

    Returns
    -------
    logits : numpy.ndarray
        Shape ``(len(records),)``.
    errors : list of str
        ``"image: reason"`` for every image that failed.
    """
    spec: PreprocessSpec = clf.card.preprocess_spec
    root = Path(images_root)
    logits = np.full(len(records), np.nan)
    errors: list[str] = []
    buf: list[np.ndarray] = []
    idx: list[int] = []

    def flush() -> None:
        if buf:
            logits[idx] = clf.predict_logits(np.stack(buf))
            buf.clear()
            idx.clear()

    it = tqdm(records, desc=f"score {variant}", unit="img", leave=False, disable=not progress)
    for i, rec in enumerate(it):
        path = root / rec.image
        try:
            if variant == "original":
                x = preprocess_file(path, spec)
            else:
                if path.suffix.lower() in (".dcm", ".dicom"):
                    raise PreprocessError("degradation variants are defined for PNG/JPEG images")
                x = apply_variant(variant, _load_image_for_variant(path), spec)
        except (PreprocessError, OSError) as exc:
            errors.append(f"{rec.image}: {exc}")
            continue
        buf.append(x)
        idx.append(i)
        if len(buf) >= batch_size:
            flush()
    flush()
    return logits, errors


def summarize_labels(records: Sequence[Record]) -> dict[str, Any]:
    """Counts per split and label, and demographics coverage, of a labels file."""
    by_split: dict[str, dict[str, int]] = {}
    for r in records:
        d = by_split.setdefault(r.split or MISSING, {"n": 0, "normal": 0, "abnormal": 0})
        d["n"] += 1
        d[LABELS[r.label]] += 1
    ages = [r.age for r in records if r.age is not None]
    return {
        "splits": by_split,
        "patients": len({r.patient_id for r in records if r.patient_id}),
        "sources": dict(Counter(r.source or MISSING for r in records)),
        "age": {
            "known": len(ages),
            "min": min(ages) if ages else None,
            "max": max(ages) if ages else None,
            "median": float(np.median(ages)) if ages else None,
        },
        "sex": dict(Counter((r.sex or MISSING) for r in records)),
        "view": dict(Counter((r.view or MISSING) for r in records)),
    }


def fit_operating_points(
    y: np.ndarray, prob: np.ndarray, *, split: str = "val", target_sensitivity: float = 0.98
) -> dict[str, dict[str, Any]]:
    """The ``balanced`` and ``high_sensitivity`` operating points of calibrated probabilities.

    Parameters
    ----------
    y : numpy.ndarray
        Labels (1 = abnormal), both classes present.
    prob : numpy.ndarray
        Calibrated probabilities.
    split : str
        Name of the split they come from (recorded).
    target_sensitivity : float
        Sensitivity of the ``high_sensitivity`` point.

    Returns
    -------
    dict
        ``{name: {"threshold", "sensitivity", "specificity", "fitted_on", "n", "rule", ...}}``.
    """
    points: dict[str, dict[str, Any]] = {}
    balanced = operating_point_balanced(y, prob)
    # never above the balanced threshold: "high sensitivity" must not be less sensitive
    high_sens = min(operating_point_for_sensitivity(y, prob, target_sensitivity), balanced)
    for name, thr in (("balanced", balanced), ("high_sensitivity", high_sens)):
        m = threshold_metrics(y, prob, thr)
        points[name] = {
            "threshold": thr,
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "fitted_on": split,
            "n": len(y),
        }
    points["high_sensitivity"]["target_sensitivity"] = target_sensitivity
    points["balanced"]["rule"] = "maximum Youden J (sensitivity + specificity - 1)"
    points["high_sensitivity"]["rule"] = (
        f"highest threshold with sensitivity >= {target_sensitivity}, "
        "capped at the balanced threshold"
    )
    return points


def refuse_test_split(split: str) -> None:
    """Calibration and operating points are fitted on validation rows, never on test.

    Parameters
    ----------
    split : str

    Raises
    ------
    ValueError
        For ``'test'``.
    """
    if split == "test":
        raise ValueError("calibration and operating points are never fitted on the test split")


@dataclass(frozen=True)
class CalibrationFit:
    """Temperature scaling and operating points fitted on one labelled split.

    Attributes
    ----------
    temperature : float
    prob : numpy.ndarray
        The calibrated probabilities of the fitted images.
    points : dict
        ``balanced`` and ``high_sensitivity`` (:func:`fit_operating_points`).
    summary : dict
        The card's ``calibration`` entry: method, temperature, where it was fitted,
        and the Brier score, ECE and ROC-AUC before and after.
    """

    temperature: float
    prob: np.ndarray
    points: dict[str, dict[str, Any]]
    summary: dict[str, Any]


def fit_calibration(
    y: np.ndarray, logits: np.ndarray, *, split: str, target_sensitivity: float = 0.98
) -> CalibrationFit:
    """Fit the temperature, then the operating points on the calibrated probabilities.

    The one calibration rule of every card (single source, pooled sources, site
    heads).

    Parameters
    ----------
    y : numpy.ndarray
        Labels (1 = abnormal).
    logits : numpy.ndarray
        Uncalibrated logits of the same images.
    split : str
        Where they come from (recorded; ``'test'`` is refused).
    target_sensitivity : float
        Sensitivity of the ``high_sensitivity`` point.

    Returns
    -------
    CalibrationFit

    Raises
    ------
    ValueError
        On the test split, or when one class is missing.
    """
    refuse_test_split(split)
    y = np.asarray(y).astype(int)
    z = np.asarray(logits, dtype=np.float64)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"split {split!r} needs both normal and abnormal images")
    temperature = float(fit_temperature(z, y))
    prob = 0.5 * (1 + np.tanh(0.5 * z / temperature))
    uncal = 0.5 * (1 + np.tanh(0.5 * z))
    summary = {
        "method": "temperature",
        "temperature": temperature,
        "fitted_on": split,
        "n": len(y),
        "val_brier_before": brier_score(y, uncal),
        "val_brier_after": brier_score(y, prob),
        "val_ece_before": expected_calibration_error(y, uncal),
        "val_ece_after": expected_calibration_error(y, prob),
        "val_roc_auc": roc_auc(y, z),
    }
    points = fit_operating_points(y, prob, split=split, target_sensitivity=target_sensitivity)
    return CalibrationFit(temperature, prob, points, summary)


def calibrate_model(
    model: str | Path,
    *,
    labels: str | Path,
    images_root: str | Path,
    split: str = "val",
    target_sensitivity: float = 0.98,
) -> ModelCard:
    """Fit temperature scaling and operating points on ``split`` and store them in the card.

    Parameters
    ----------
    model : str or pathlib.Path
        ONNX model whose card is updated (embedded and sidecar).
    labels, images_root
        Labels file and image folder.
    split : str
        Split to fit on; ``'test'`` is refused.
    target_sensitivity : float
        Sensitivity of the ``high_sensitivity`` operating point.

    Returns
    -------
    ModelCard
        The updated card.
    """
    refuse_test_split(split)
    records = read_labels(labels, split)
    if not records:
        raise ValueError(f"no rows with split={split!r} in {labels}")
    clf = Classifier.load(model)
    logits, errors = score_records(clf, records, images_root)
    ok = np.isfinite(logits)
    y = np.array([r.label for r in records])[ok]
    z = logits[ok]
    fit = fit_calibration(y, z, split=split, target_sensitivity=target_sensitivity)
    card = clf.card.model_copy(
        update={
            "operating_points": fit.points,
            "calibration": fit.summary,
            "training_data": {
                **clf.card.training_data,
                "counts": summarize_labels(read_labels(labels)),
            },
        }
    )
    if errors:
        logger.warning("%d images could not be scored during calibration", len(errors))
    return embed_card(model, card)


def _gap(vals: dict[str, float], min_group: int) -> dict[str, Any]:
    if len(vals) < 2:
        return {
            "gap": None,
            "note": f"fewer than two groups with >= {min_group} images of the class(es) needed",
        }
    hi_g, lo_g = max(vals, key=vals.get), min(vals, key=vals.get)
    return {
        "gap": vals[hi_g] - vals[lo_g],
        "highest": hi_g,
        "lowest": lo_g,
        "groups_compared": sorted(vals),
    }


def subgroup_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    records: Sequence[Record],
    thresholds: dict[str, float],
    *,
    min_group: int = 5,
) -> dict[str, Any]:
    """ROC-AUC, TPR, FPR and underdiagnosis rate per sex, age band and view.

    Missing values form their own group. For each attribute and operating
    point, the largest gap (max - min) is computed over the groups with at
    least ``min_group`` abnormal images (TPR, underdiagnosis), normal images
    (FPR) or both (ROC-AUC); smaller groups are listed but not compared.
    """
    attrs = [_attributes(r) for r in records]
    out: dict[str, Any] = {}
    for attr in ("sex", "age_band", "view"):
        values = np.array([a[attr] for a in attrs], dtype=object)
        groups: dict[str, Any] = {}
        for g in sorted(set(values.tolist())):
            m = values == g
            yy, pp = y[m], prob[m]
            entry: dict[str, Any] = {
                "n": int(m.sum()),
                "n_abnormal": int(yy.sum()),
                "n_normal": int((1 - yy).sum()),
                "roc_auc": roc_auc(yy, pp),
            }
            for op, thr in thresholds.items():
                tm = threshold_metrics(yy, pp, thr)
                entry[op] = {
                    "tpr": tm["sensitivity"],
                    "fpr": 1 - tm["specificity"]
                    if np.isfinite(tm["specificity"])
                    else float("nan"),
                    "underdiagnosis_rate": 1 - tm["sensitivity"]
                    if np.isfinite(tm["sensitivity"])
                    else float("nan"),
                }
            groups[g] = entry
        gaps: dict[str, Any] = {}
        for op in thresholds:
            for key, need in (
                ("tpr", "n_abnormal"),
                ("fpr", "n_normal"),
                ("underdiagnosis_rate", "n_abnormal"),
            ):
                vals = {
                    g: e[op][key]
                    for g, e in groups.items()
                    if e[need] >= min_group and np.isfinite(e[op][key])
                }
                gaps[f"{op}.{key}"] = _gap(vals, min_group)
        aucs = {
            g: e["roc_auc"]
            for g, e in groups.items()
            if min(e["n_abnormal"], e["n_normal"]) >= min_group and np.isfinite(e["roc_auc"])
        }
        gaps["roc_auc"] = _gap(aucs, min_group)
        out[attr] = {"groups": groups, "largest_gaps": gaps}
    return out


def _overall(
    y: np.ndarray, prob: np.ndarray, thresholds: dict[str, float], n_boot: int
) -> dict[str, Any]:
    bal = thresholds.get("balanced", 0.5)

    def at(key: str, thr: float):
        return lambda yy, pp: threshold_metrics(yy, pp, thr)[key]

    res: dict[str, Any] = {
        "n": len(y),
        "n_abnormal": int(y.sum()),
        "n_normal": int((1 - y).sum()),
        "roc_auc": bootstrap_ci(roc_auc, y, prob, n_boot=n_boot),
        "brier": bootstrap_ci(brier_score, y, prob, n_boot=n_boot),
        "average_precision": average_precision(y, prob),
        "ece": expected_calibration_error(y, prob),
        "threshold_for_point_metrics": "balanced",
    }
    for key in ("accuracy", "precision", "recall", "f1"):
        res[key] = bootstrap_ci(at(key, bal), y, prob, n_boot=n_boot)
    res["operating_points"] = {}
    for name, thr in thresholds.items():
        tm = threshold_metrics(y, prob, thr)
        res["operating_points"][name] = {
            "threshold": thr,
            "sensitivity": bootstrap_ci(at("sensitivity", thr), y, prob, n_boot=n_boot),
            "specificity": bootstrap_ci(at("specificity", thr), y, prob, n_boot=n_boot),
            "ppv": tm["precision"],
            "confusion": {k: int(tm[k]) for k in ("tp", "fp", "tn", "fn")},
        }
    return res


def _plots(out: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=f"ROC: {title}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    files.append("roc.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        prec, rec, _ = precision_recall_curve(y, p)
        ax.step(
            np.r_[0, rec],
            np.r_[prec[0], prec],
            where="post",
            label=f"{name} (AP {average_precision(y, p):.3f})",
        )
    ax.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02), title=f"Precision-recall: {title}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "precision_recall.png", dpi=110)
    plt.close(fig)
    files.append("precision_recall.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    for name, (y, p) in curves.items():
        b = calibration_bins(y, p, 10)
        mp, fp = np.array(b["mean_predicted"]), np.array(b["fraction_positive"])
        ok = np.isfinite(mp)
        ax.plot(mp[ok], fp[ok], "o-", label=f"{name} (Brier {brier_score(y, p):.3f})")
    ax.set(
        xlabel="mean calibrated probability",
        ylabel="observed abnormal fraction",
        title=f"Calibration: {title}",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)
    files.append("calibration.png")
    return files


def _fmt(ci: dict[str, Any] | float | None, digits: int = 3) -> str:
    if ci is None:
        return "n/a"
    if isinstance(ci, dict):
        v, lo, hi = ci["value"], ci["ci_low"], ci["ci_high"]
        if not np.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{ci:.{digits}f}" if np.isfinite(ci) else "n/a"


def _report(metrics: dict[str, Any], card: ModelCard) -> str:
    v = metrics["variants"]
    names = list(v)
    split_text = f", split `{metrics['split']}`" if metrics["split"] else ""
    points_text = ", ".join(f"{k} = {t:.4f}" for k, t in metrics["thresholds"].items())
    lines = [
        f"# Evaluation: {metrics['title']}",
        "",
        (
            f"Model **{card.name} {card.version}** (weights sha256 `{card.sha256[:16]}…`), "
            f"labels `{metrics['labels']}`{split_text}, {metrics['n']} images "
            f"({metrics['n_abnormal']} abnormal, {metrics['n_normal']} normal)."
        ),
        (
            f"Calibration: temperature {card.temperature:.3f} (fitted on validation). "
            f"Operating points fitted on validation: {points_text}."
        ),
        (
            f"95 % intervals: percentile bootstrap over images, {metrics['n_boot']} resamples. "
            "Point metrics (accuracy, precision, recall, F1) at the balanced operating point."
        ),
        "",
        "## Overall, side by side",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    rows = [
        ("ROC-AUC", "roc_auc"),
        ("Brier", "brier"),
        ("accuracy", "accuracy"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(v[n]["overall"][key]) for n in names) + " |")
    lines.append(
        "| average precision | "
        + " | ".join(_fmt(v[n]["overall"]["average_precision"]) for n in names)
        + " |"
    )
    lines.append(
        "| ECE (10 bins) | " + " | ".join(_fmt(v[n]["overall"]["ece"]) for n in names) + " |"
    )
    for op in metrics["thresholds"]:
        for key in ("sensitivity", "specificity"):
            lines.append(
                f"| {key} @ {op} | "
                + " | ".join(_fmt(v[n]["overall"]["operating_points"][op][key]) for n in names)
                + " |"
            )
    lines.append(
        "| images not scored | " + " | ".join(str(len(v[n]["errors"])) for n in names) + " |"
    )
    lines += ["", "Variants:", ""] + [f"- `{n}`: {VARIANT_DESCRIPTIONS.get(n, n)}" for n in names]
    first = names[0]
    lines += [
        "",
        f"## Subgroups ({first})",
        "",
        (
            "TPR, FPR and underdiagnosis rate (1 - TPR) at the balanced and high-sensitivity "
            "operating points. Missing demographics form their own group."
        ),
        "",
    ]
    for attr, block in v[first]["subgroups"].items():
        header = (
            "| group | n | abnormal | ROC-AUC | TPR bal. | FPR bal. | underdiag. bal. "
            "| TPR high-sens. | FPR high-sens. | underdiag. high-sens. |"
        )
        lines += [f"### {attr}", "", header, "|---|---|---|---|---|---|---|---|---|---|"]
        for g, e in block["groups"].items():
            b, h = e.get("balanced", {}), e.get("high_sensitivity", {})
            lines.append(
                f"| {g} | {e['n']} | {e['n_abnormal']} | {_fmt(e['roc_auc'])} | "
                f"{_fmt(b.get('tpr'))} | {_fmt(b.get('fpr'))} | "
                f"{_fmt(b.get('underdiagnosis_rate'))} | "
                f"{_fmt(h.get('tpr'))} | {_fmt(h.get('fpr'))} | "
                f"{_fmt(h.get('underdiagnosis_rate'))} |"
            )
        lines += [
            "",
            "Largest gap per metric (groups with at least 5 images of the class needed):",
            "",
            "| metric | gap | highest | lowest |",
            "|---|---|---|---|",
        ]
        for key, gp in block["largest_gaps"].items():
            if gp.get("gap") is None:
                lines.append(f"| {key} | n/a | {gp.get('note')} | |")
            else:
                lines.append(f"| {key} | {gp['gap']:.3f} | {gp['highest']} | {gp['lowest']} |")
        lines.append("")
    lines += [
        "## Plots",
        "",
        "![ROC](roc.png) ![Precision-recall](precision_recall.png) ![Calibration](calibration.png)",
        "",
    ]
    return "\n".join(lines)


def evaluate_model(
    model: str | Path,
    *,
    labels: str | Path,
    images_root: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    variants: str | Sequence[str] = "original",
    n_boot: int = 1000,
    update_card: bool = False,
    title: str | None = None,
    thresholds: dict[str, float] | None = None,
    keep: Callable[[Record], bool] | None = None,
) -> dict[str, Any]:
    """Evaluate an ONNX model on a labels file and write the report.

    Parameters
    ----------
    model : str or pathlib.Path
        The ONNX model (with its card: calibration and operating points).
    labels, images_root
        Labels CSV and the folder its ``image`` paths are relative to.
    out_dir : str or pathlib.Path
        Receives metrics.json, predictions.csv (first variant;
        ``predictions_<variant>.csv`` for others), report.md, roc.png,
        precision_recall.png, calibration.png.
    split : str, optional
        Only rows of this split (all rows when None).
    variants : str or sequence of str
        Degradations scored side by side (see :mod:`models.degrade`).
    n_boot : int
        Bootstrap resamples for the 95 % intervals.
    update_card : bool
        Store the overall and subgroup metrics in the model card.
    title : str, optional
        Report title.
    thresholds : dict, optional
        Operating point thresholds to use instead of the card-wide ones (a population's).
    keep : callable, optional
        Only the records for which it is true (e.g. the era-matched patients).

    Returns
    -------
    dict
        The content of metrics.json.
    """
    if isinstance(variants, str):
        variants = [s.strip() for s in variants.split(",") if s.strip()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = read_labels(labels, split)
    if keep is not None:
        records = [r for r in records if keep(r)]
    if not records:
        raise ValueError(f"no rows{' in split ' + split if split else ''} in {labels}")
    clf = Classifier.load(model)
    card = clf.card
    if thresholds is None:
        thresholds = {k: card.threshold(k) for k in card.operating_points} or {"balanced": 0.5}
    y_all = np.array([r.label for r in records])
    metrics: dict[str, Any] = {
        "title": title or f"{Path(labels).parent.name}{'/' + split if split else ''}",
        "model": {
            "name": card.name,
            "version": card.version,
            "sha256": card.sha256,
            "path": str(Path(model).name),
        },
        "labels": "/".join(Path(labels).resolve().parts[-2:]),
        "split": split,
        "n": len(records),
        "n_abnormal": int(y_all.sum()),
        "n_normal": int((1 - y_all).sum()),
        "n_boot": n_boot,
        "thresholds": thresholds,
        "providers": clf.active_providers,
        "variants": {},
    }
    curves = {}
    for vi, variant in enumerate(variants):
        t0 = time.time()
        logits, errors = score_records(clf, records, images_root, variant=variant)
        prob = card.calibrate(logits)
        ok = np.isfinite(prob)
        y, p = y_all[ok], prob[ok]
        recs_ok = [r for r, good in zip(records, ok, strict=True) if good]
        name = "predictions.csv" if vi == 0 else f"predictions_{variant}.csv"
        with (out / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "label", "probability"])
            for r, pr in zip(records, prob, strict=True):
                w.writerow([r.image, LABELS[r.label], "" if not np.isfinite(pr) else f"{pr:.6f}"])
        metrics["variants"][variant] = {
            "description": VARIANT_DESCRIPTIONS.get(variant, variant),
            "overall": _overall(y, p, thresholds, n_boot) if len(y) else {},
            "subgroups": subgroup_metrics(y, p, recs_ok, thresholds) if len(y) else {},
            "calibration_bins": calibration_bins(y, p) if len(y) else {},
            "errors": errors,
            "seconds": round(time.time() - t0, 1),
        }
        curves[variant] = (y, p)
        logger.info(
            "%s: ROC-AUC %.4f, Brier %.4f (%d errors)",
            variant,
            roc_auc(y, p),
            brier_score(y, p),
            len(errors),
        )
    # The numbers first: a missing plotting library must not cost the evaluation.
    missing: ModuleNotFoundError | None = None
    try:
        metrics["plots"] = _plots(out, curves, metrics["title"])
    except ModuleNotFoundError as exc:
        missing, metrics["plots"] = exc, []
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))
    (out / "report.md").write_text(_report(metrics, card))
    if update_card:
        key = metrics["title"]
        summary = {
            v: {
                k: m["overall"][k]
                for k in (
                    "n",
                    "roc_auc",
                    "brier",
                    "accuracy",
                    "precision",
                    "recall",
                    "f1",
                    "average_precision",
                    "ece",
                    "operating_points",
                )
            }
            for v, m in metrics["variants"].items()
            if m["overall"]
        }
        new_metrics = {**card.metrics, key: summary}
        first = variants[0]
        new_sub = {
            **card.subgroups,
            key: {
                a: {"groups": b["groups"], "largest_gaps": b["largest_gaps"]}
                for a, b in metrics["variants"][first]["subgroups"].items()
            },
        }
        updated = card.model_copy(update={"metrics": new_metrics, "subgroups": new_sub})
        embed_card(model, updated)
    if missing is not None:
        line = missing_extra_line(
            missing, "the plots (roc.png, precision_recall.png, calibration.png)"
        )
        if line is None:
            raise missing
        raise MissingExtra(f"metrics.json, predictions.csv and report.md are in {out}; {line}")
    return metrics
