"""Calibration and evaluation over several labelled sources (no torch).

``calibrate_sources`` fits the temperature on the pooled validation rows of
every source, the card-wide operating points on the pooled rows, and each
population's own points (pediatric < 18 years, adult otherwise; rows without
an age take their source's population). The population points go into the
card when one threshold cannot serve both populations (the card-wide point
loses more than :data:`MAX_YOUDEN_LOSS` of a population's Youden J on
validation).

``evaluate_sources`` writes one report over every source: per source the
model beside the histogram-only baseline (:mod:`models.shortcuts`) on the same
images, the histogram-equalised variant, the era-matched NIH patients, the
specificity at 90 % sensitivity, and the node's rule (each image judged at its
population's point), with a full :func:`models.evaluate.evaluate_model` report
per source in a sub-folder (95 % intervals, per age band, sex and view).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.card import POPULATIONS, ModelCard, embed_card, population_for_age
from models.data import read_labels
from models.evaluate import (
    _plots,
    evaluate_model,
    fit_calibration,
    fit_operating_points,
    refuse_test_split,
    score_records,
)
from models.metrics import (
    bootstrap_ci,
    brier_score,
    roc_auc,
    roc_curve,
    threshold_metrics,
)
from models.runtime import Classifier
from models.shortcuts import era_matched, fit_histogram_baseline
from models.sources import DataSource, describe_sources, read_sources

__all__ = [
    "MAX_YOUDEN_LOSS",
    "calibrate_sources",
    "evaluate_sources",
    "specificity_at_sensitivity",
]

logger = logging.getLogger(__name__)

#: Largest loss of Youden J a population may suffer at the card-wide point
#: before the card carries per-population points.
MAX_YOUDEN_LOSS = 0.02
MIN_CLASS = 5


def _youden(y: np.ndarray, p: np.ndarray, thr: float) -> float:
    m = threshold_metrics(y, p, thr)
    return m["sensitivity"] + m["specificity"] - 1


def calibrate_sources(
    model: str | Path,
    sources: Sequence[DataSource],
    *,
    split: str = "val",
    target_sensitivity: float = 0.98,
    force_population_points: bool | None = None,
) -> ModelCard:
    """Fit temperature and operating points on the pooled ``split`` of several sources.

    Parameters
    ----------
    model : str or pathlib.Path
        ONNX model whose card is updated (embedded and sidecar).
    sources : sequence of DataSource
        The labelled sources.
    split : str
        Split to fit on; ``'test'`` is refused.
    target_sensitivity : float
        Sensitivity of the ``high_sensitivity`` points.
    force_population_points : bool, optional
        Carry per-population points (True) or not (False) whatever the check says.

    Returns
    -------
    ModelCard
        The updated card.
    """
    refuse_test_split(split)
    items = read_sources(sources, split)
    if not items:
        raise ValueError(f"no rows with split={split!r} in the sources")
    clf = Classifier.load(model)
    logits = np.full(len(items), np.nan)
    for src in sources:
        idx = [i for i, it in enumerate(items) if it.source is src]
        z, _ = score_records(clf, [items[i].record for i in idx], src.images_root)
        logits[idx] = z
    ok = np.isfinite(logits)
    y = np.array([it.record.label for it in items])[ok]
    z = logits[ok]
    pops = np.array([it.population for it in items])[ok]
    names = np.array([it.source.name for it in items])[ok]
    fit = fit_calibration(y, z, split=split, target_sensitivity=target_sensitivity)
    prob, points = fit.prob, fit.points
    for pt in points.values():
        pt["pooled_sources"] = [s.name for s in sources]
    pop_points: dict[str, dict[str, Any]] = {}
    check: dict[str, Any] = {}
    for pop in POPULATIONS:
        m = pops == pop
        if min(int(y[m].sum()), int((1 - y[m]).sum())) < MIN_CLASS:
            continue
        own = fit_operating_points(
            y[m], prob[m], split=split, target_sensitivity=target_sensitivity
        )
        for pt in own.values():
            pt["population"] = pop
        pop_points[pop] = own
        j_own = _youden(y[m], prob[m], own["balanced"]["threshold"])
        j_all = _youden(y[m], prob[m], points["balanced"]["threshold"])
        check[pop] = {
            "n": int(m.sum()),
            "youden_at_own_point": j_own,
            "youden_at_card_wide_point": j_all,
            "roc_auc": roc_auc(y[m], prob[m]),
        }
    needed = any(
        c["youden_at_own_point"] - c["youden_at_card_wide_point"] > MAX_YOUDEN_LOSS
        for c in check.values()
    )
    carry = needed if force_population_points is None else force_population_points
    per_source = {}
    for name in dict.fromkeys(names.tolist()):
        m = names == name
        if min(int(y[m].sum()), int((1 - y[m]).sum())) >= MIN_CLASS:
            per_source[name] = {
                "n": int(m.sum()),
                "roc_auc": roc_auc(y[m], prob[m]),
                "points": fit_operating_points(
                    y[m], prob[m], split=split, target_sensitivity=target_sensitivity
                ),
            }
    card = clf.card.model_copy(
        update={
            "operating_points": points,
            "population_operating_points": pop_points if carry else {},
            "calibration": {
                **fit.summary,
                "pooled_sources": [s.name for s in sources],
                "population_check": {
                    "rule": (
                        "per-population points are carried when the card-wide balanced point "
                        f"loses more than {MAX_YOUDEN_LOSS} of a population's Youden J on {split}"
                    ),
                    "carried": carry,
                    "populations": check,
                },
                "per_source": per_source,
                "population_points_fitted": pop_points,
            },
            "training_data": {
                **clf.card.training_data,
                "sources": describe_sources(sources),
            },
        }
    )
    return embed_card(model, card)


def specificity_at_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float = 0.9) -> float:
    """Highest specificity of any threshold reaching ``sensitivity`` (read off the ROC curve)."""
    fpr, tpr, _ = roc_curve(y, p)
    ok = tpr >= sensitivity
    return float(1 - fpr[ok].min()) if ok.any() else float("nan")


def _ci(fn, y: np.ndarray, p: np.ndarray, n_boot: int) -> dict[str, float]:
    if min(int(y.sum()), int((1 - y).sum())) < 2:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    return bootstrap_ci(fn, y, p, n_boot=n_boot)


def _fmt(ci: dict[str, float] | float | None) -> str:
    if ci is None:
        return "n/a"
    if isinstance(ci, dict):
        if not np.isfinite(ci["value"]):
            return "n/a"
        return f"{ci['value']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"
    return f"{ci:.3f}" if np.isfinite(ci) else "n/a"


def _source_thresholds(card: ModelCard, population: str) -> dict[str, float]:
    own = card.population_operating_points.get(population)
    if own:
        return {k: float(v["threshold"]) for k, v in own.items()}
    return {k: card.threshold(k) for k in card.operating_points} or {"balanced": 0.5}


def evaluate_sources(
    model: str | Path,
    sources: Sequence[DataSource],
    *,
    out_dir: str | Path,
    split: str = "test",
    variants: Sequence[str] = ("original", "histeq"),
    n_boot: int = 1000,
    update_card: bool = False,
    checkpoint: str | Path | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """One report over several sources, shortcut-aware (see the module docstring).

    Parameters
    ----------
    model : str or pathlib.Path
        The ONNX model with its calibrated card.
    sources : sequence of DataSource
        Each is reported on its ``split`` rows; its histogram baseline is fitted
        on its ``train`` rows.
    out_dir : str or pathlib.Path
        Receives ``report.md``, ``metrics.json`` and one sub-folder per source
        (and per era-matched subset) with the full per-source report.
    split : str
        The split reported (``test``).
    variants : sequence of str
        Degradations scored per source (``histeq`` is the equalised variant).
    n_boot : int
        Bootstrap resamples for the 95 % intervals.
    update_card : bool
        Store each source's metrics in the card.
    checkpoint : str or pathlib.Path, optional
        The torch checkpoint of the model: class-activation maps of adult true
        and false positives are drawn with it (needs torch).
    title : str, optional
        Report title.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf = Classifier.load(model)
    card = clf.card
    summary: dict[str, Any] = {
        "title": title or f"all sources / {split}",
        "split": split,
        "sources": {},
    }
    for src in sources:
        recs = read_labels(src.labels, split)
        if not recs:
            continue
        thresholds = _source_thresholds(card, src.population)
        sub = out / src.name
        vs = [
            v
            for v in variants
            if v == "original" or Path(recs[0].image).suffix.lower() not in (".dcm",)
        ]
        m = evaluate_model(
            model,
            labels=src.labels,
            images_root=src.images_root,
            out_dir=sub,
            split=split,
            variants=vs,
            n_boot=n_boot,
            update_card=update_card,
            title=f"{src.name}/{split}",
            thresholds=thresholds,
        )
        entry = _source_summary(src, recs, sub, thresholds, card, n_boot)
        entry["report"] = f"{src.name}/report.md"
        entry["variants"] = {
            v: {
                "roc_auc": m["variants"][v]["overall"]["roc_auc"],
                "brier": m["variants"][v]["overall"]["brier"],
            }
            for v in m["variants"]
        }
        entry["subgroup_gaps"] = {
            attr: block["largest_gaps"] for attr, block in m["variants"][vs[0]]["subgroups"].items()
        }
        entry["subgroups"] = {
            attr: {
                g: {"n": e["n"], "roc_auc": e["roc_auc"], **{k: e[k] for k in thresholds}}
                for g, e in block["groups"].items()
            }
            for attr, block in m["variants"][vs[0]]["subgroups"].items()
        }
        era = era_matched(recs)
        if any(era) and 0 < sum(r.label for r, e in zip(recs, era, strict=True) if e) < sum(era):
            ids = {r.image for r, e in zip(recs, era, strict=True) if e}
            evaluate_model(
                model,
                labels=src.labels,
                images_root=src.images_root,
                out_dir=out / f"{src.name}-era-matched",
                split=split,
                variants=["original"],
                n_boot=n_boot,
                title=f"{src.name}/{split}, era-matched patients (nih-1280..nih-3970)",
                thresholds=thresholds,
                keep=lambda r, ids=ids: r.image in ids,
            )
            entry["era_matched_report"] = f"{src.name}-era-matched/report.md"
        summary["sources"][src.name] = entry
    if checkpoint is not None:
        from models.cam import draw_cams

        adult = [s for s in sources if s.population == "adult" and s.name in summary["sources"]]
        summary["cams"] = []
        for src in adult:
            png = draw_cams(
                checkpoint,
                out / src.name / "predictions.csv",
                src.images_root,
                summary["sources"][src.name]["threshold_balanced"],
                out / f"cam_{src.name}.png",
            )
            if png is not None:
                summary["cams"].append(png.name)
    curves = {}
    for name in summary["sources"]:
        probs = _read_probs(out / name / "predictions.csv")
        labels = _read_labels_of(out / name / "predictions.csv")
        keys = [k for k in probs if k in labels]
        curves[name] = (np.array([labels[k] for k in keys]), np.array([probs[k] for k in keys]))
    summary["plots"] = _plots(out, curves, summary["title"])
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
    (out / "report.md").write_text(_report(summary, card))
    return summary


def _read_labels_of(path: Path) -> dict[str, int]:
    import csv

    with path.open(newline="") as fh:
        return {r["image"]: int(r["label"] == "abnormal") for r in csv.DictReader(fh)}


def _read_probs(path: Path) -> dict[str, float]:
    import csv

    with path.open(newline="") as fh:
        return {r["image"]: float(r["probability"]) for r in csv.DictReader(fh) if r["probability"]}


def _source_summary(
    src: DataSource,
    recs: list,
    sub: Path,
    thresholds: dict[str, float],
    card: ModelCard,
    n_boot: int,
) -> dict[str, Any]:
    probs = _read_probs(sub / "predictions.csv")
    eq_file = sub / "predictions_histeq.csv"
    probs_eq = _read_probs(eq_file) if eq_file.exists() else {}
    keep = [r for r in recs if r.image in probs]
    y = np.array([r.label for r in keep])
    p = np.array([probs[r.image] for r in keep])
    root = Path(src.images_root)
    train = read_labels(src.labels, "train")
    entry: dict[str, Any] = {
        "population_without_age": src.population,
        "n": len(keep),
        "n_abnormal": int(y.sum()),
        "threshold_balanced": thresholds.get("balanced", 0.5),
        "roc_auc": _ci(roc_auc, y, p, n_boot),
        "brier": _ci(brier_score, y, p, n_boot),
        "specificity_at_sensitivity_0.9": specificity_at_sensitivity(y, p, 0.9),
    }
    # the node's rule: every image at its own population's point
    thr_img = np.array(
        [
            card.operating_point_for(
                r.age if r.age is not None else (5.0 if src.population == "pediatric" else None)
            )[1]
            for r in keep
        ]
    )
    tm_pred = (p >= thr_img).astype(int)
    tp, fn = int(((tm_pred == 1) & (y == 1)).sum()), int(((tm_pred == 0) & (y == 1)).sum())
    tn, fp = int(((tm_pred == 0) & (y == 0)).sum()), int(((tm_pred == 1) & (y == 0)).sum())
    entry["node_rule_balanced"] = {
        "sensitivity": tp / max(1, tp + fn),
        "specificity": tn / max(1, tn + fp),
        "populations": sorted(
            {population_for_age(r.age) if r.age is not None else src.population for r in keep}
        ),
    }
    if len({r.label for r in train}) == 2:
        base = fit_histogram_baseline([root / r.image for r in train], [r.label for r in train])
        b = base.scores([root / r.image for r in keep])
        entry["histogram_baseline"] = {"roc_auc": _ci(roc_auc, y, b, n_boot)}
        entry["margin_over_baseline"] = (
            entry["roc_auc"]["value"] - entry["histogram_baseline"]["roc_auc"]["value"]
        )
        if probs_eq:
            base_eq = fit_histogram_baseline(
                [root / r.image for r in train], [r.label for r in train], equalize=True
            )
            pe = np.array([probs_eq.get(r.image, np.nan) for r in keep])
            ok = np.isfinite(pe)
            entry["histeq"] = {
                "roc_auc": _ci(roc_auc, y[ok], pe[ok], n_boot),
                "baseline_roc_auc": _ci(
                    roc_auc,
                    y[ok],
                    base_eq.scores([root / r.image for r, o in zip(keep, ok, strict=True) if o]),
                    n_boot,
                ),
            }
        era = np.array(era_matched(keep))
        if era.any() and 0 < y[era].sum() < era.sum():
            entry["era_matched"] = {
                "n": int(era.sum()),
                "n_abnormal": int(y[era].sum()),
                "roc_auc": _ci(roc_auc, y[era], p[era], n_boot),
                "baseline_roc_auc": _ci(roc_auc, y[era], b[era], n_boot),
                "specificity_at_sensitivity_0.9": specificity_at_sensitivity(y[era], p[era], 0.9),
            }
    return entry


def _report(summary: dict[str, Any], card: ModelCard) -> str:
    s = summary["sources"]
    lines = [
        f"# Evaluation: {summary['title']}",
        "",
        f"Model **{card.name} {card.version}** (weights sha256 `{card.sha256[:16]}…`), split `{summary['split']}` of every source.",  # noqa: E501 (a markdown table row)
        (
            "95 % intervals: percentile bootstrap over images. Histogram baseline: logistic regression on the "  # noqa: E501 (a markdown table row)
            "32-bin intensity histogram, fitted on the source's train split, scored on the same images as the "  # noqa: E501 (a markdown table row)
            "model. Each source is judged at its population's validation-fitted operating points; "
            "'node rule' judges every image at the point the node would pick from its age."
        ),
        "",
        "| source | n (abn.) | ROC-AUC | histogram baseline | margin | histeq: model / baseline | era-matched: model / baseline | spec. @ sens. 0.9 | Brier | node rule: sens. / spec. |",  # noqa: E501 (a markdown table row)
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in s.items():
        hb = e.get("histogram_baseline", {}).get("roc_auc")
        he = e.get("histeq", {})
        era = e.get("era_matched", {})
        nr = e["node_rule_balanced"]
        lines.append(
            f"| [{name}]({e['report']}) | {e['n']} ({e['n_abnormal']}) | {_fmt(e['roc_auc'])} | {_fmt(hb)} | "  # noqa: E501 (a markdown table row)
            f"{_fmt(e.get('margin_over_baseline'))} | "
            f"{_fmt(he.get('roc_auc'))} / {_fmt(he.get('baseline_roc_auc'))} | "
            + (
                f"[{_fmt(era['roc_auc'])}]({e['era_matched_report']}) / {_fmt(era['baseline_roc_auc'])} (n={era['n']}, {era['n_abnormal']} abn.)"  # noqa: E501 (a markdown table row)
                if era
                else "n/a"
            )
            + f" | {_fmt(e['specificity_at_sensitivity_0.9'])} | {_fmt(e['brier'])} | {nr['sensitivity']:.3f} / {nr['specificity']:.3f} |"  # noqa: E501 (a markdown table row)
        )
    lines += ["", "## Largest subgroup gaps (balanced point of the source's population)", ""]
    lines += [
        "| source | attribute | TPR gap | FPR gap | underdiagnosis gap | ROC-AUC gap |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in s.items():
        for attr, gaps in e["subgroup_gaps"].items():

            def g(key: str, gaps: dict[str, Any] = gaps) -> str:
                gp = gaps.get(key, {})
                if gp.get("gap") is None:
                    return "n/a"
                return f"{gp['gap']:.3f} ({gp['highest']} > {gp['lowest']})"

            lines.append(
                f"| {name} | {attr} | {g('balanced.tpr')} | {g('balanced.fpr')} | "
                f"{g('balanced.underdiagnosis_rate')} | {g('roc_auc')} |"
            )
    lines += ["", "## Per view (view is confounded with the label in the NIH data)", ""]
    lines += ["| source | view | n | ROC-AUC | TPR bal. | FPR bal. |", "|---|---|---|---|---|---|"]
    for name, e in s.items():
        for gname, ge in e["subgroups"].get("view", {}).items():
            b = ge.get("balanced", {})
            lines.append(
                f"| {name} | {gname} | {ge['n']} | {_fmt(ge['roc_auc'])} | {_fmt(b.get('tpr'))} | {_fmt(b.get('fpr'))} |"  # noqa: E501 (a markdown table row)
            )
    lines += [
        "",
        "## Per age band",
        "",
        "| source | age band | n | ROC-AUC | TPR bal. | FPR bal. |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in s.items():
        for gname, ge in e["subgroups"].get("age_band", {}).items():
            b = ge.get("balanced", {})
            lines.append(
                f"| {name} | {gname} | {ge['n']} | {_fmt(ge['roc_auc'])} | {_fmt(b.get('tpr'))} | {_fmt(b.get('fpr'))} |"  # noqa: E501 (a markdown table row)
            )
    lines += ["", "## Operating points", ""]
    lines.append("| population | point | threshold | val sensitivity | val specificity |")
    lines.append("|---|---|---|---|---|")
    for k, v in card.operating_points.items():
        lines.append(
            f"| all (card-wide) | {k} | {v['threshold']:.4f} | {v['sensitivity']:.3f} | {v['specificity']:.3f} |"  # noqa: E501 (a markdown table row)
        )
    for pop, pts in card.population_operating_points.items():
        for k, v in pts.items():
            lines.append(
                f"| {pop} | {k} | {v['threshold']:.4f} | {v['sensitivity']:.3f} | {v['specificity']:.3f} |"  # noqa: E501 (a markdown table row)
            )
    if summary.get("cams"):
        lines += [
            "",
            "## Class-activation maps (adult true and false positives)",
            "",
            "Red: regions that raise the abnormal logit (CAM of the last convolution, weighted by the linear head).",  # noqa: E501 (a markdown table row)
            "",
        ] + [f"![CAM]({c})" for c in summary["cams"]]
    lines += [
        "",
        "## Plots (one curve per source)",
        "",
        "![ROC](roc.png) ![Precision-recall](precision_recall.png) ![Calibration](calibration.png)",
    ]
    lines += [
        "",
        "Per-source reports (plots, variants, all subgroups): "
        + ", ".join(f"[{n}]({e['report']})" for n, e in s.items()),
        "",
    ]
    return "\n".join(lines)
