"""Metric functions checked against scikit-learn on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from models import metrics as M

sk = pytest.importorskip("sklearn.metrics")


def _fixed(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(y * 0.35 + rng.normal(0.35, 0.25, n), 0, 1)
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_roc_auc_matches_sklearn(seed: int, ties: bool) -> None:
    y, s = _fixed(seed, ties=ties)
    assert M.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_one_class_is_nan() -> None:
    assert np.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


@pytest.mark.parametrize("seed", [0, 3])
def test_roc_curve_matches_sklearn(seed: int) -> None:
    y, s = _fixed(seed, ties=True)
    fpr, tpr, thr = M.roc_curve(y, s)
    sfpr, stpr, sthr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr)
    np.testing.assert_allclose(tpr, stpr)
    np.testing.assert_allclose(thr[1:], sthr[1:])


def test_precision_recall_and_average_precision_match_sklearn() -> None:
    y, s = _fixed(4, ties=True)
    p, r, _ = M.precision_recall_curve(y, s)
    sp, sr, _ = sk.precision_recall_curve(y, s)
    # sklearn returns increasing thresholds and appends (1, 0)
    np.testing.assert_allclose(p[::-1], sp[:-1][-len(p) :])
    np.testing.assert_allclose(r[::-1], sr[:-1][-len(r) :])
    assert M.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


def test_brier_and_threshold_metrics_match_sklearn() -> None:
    y, s = _fixed(5)
    assert M.brier_score(y, s) == pytest.approx(sk.brier_score_loss(y, s), abs=1e-12)
    for thr in (0.3, 0.5, 0.71):
        pred = (s >= thr).astype(int)
        m = M.threshold_metrics(y, s, thr)
        assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
        assert m["precision"] == pytest.approx(sk.precision_score(y, pred))
        assert m["recall"] == pytest.approx(sk.recall_score(y, pred))
        assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
        tn, fp, fn, tp = sk.confusion_matrix(y, pred).ravel()
        assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
        assert m["specificity"] == pytest.approx(tn / (tn + fp))


def test_operating_points() -> None:
    y, s = _fixed(6)
    thr = M.operating_point_for_sensitivity(y, s, 0.95)
    assert M.threshold_metrics(y, s, thr)["sensitivity"] >= 0.95
    # the next higher distinct score would fall below the target
    higher = np.unique(s[s > thr])
    if len(higher):
        assert M.threshold_metrics(y, s, higher[0])["sensitivity"] < 0.95
    bal = M.operating_point_balanced(y, s)
    fpr, tpr, thrs = sk.roc_curve(y, s)
    best = thrs[np.argmax(tpr - fpr)]
    assert M.threshold_metrics(y, s, bal)["sensitivity"] + M.threshold_metrics(y, s, bal)[
        "specificity"
    ] == (
        pytest.approx(
            M.threshold_metrics(y, s, best)["sensitivity"]
            + M.threshold_metrics(y, s, best)["specificity"]
        )
    )


def test_calibration_bins_match_sklearn() -> None:
    from sklearn.calibration import calibration_curve

    y, s = _fixed(7)
    b = M.calibration_bins(y, s, 10)
    frac, mean = calibration_curve(y, s, n_bins=10)
    ok = [c > 0 for c in b["count"]]
    np.testing.assert_allclose(np.array(b["fraction_positive"])[ok], frac)
    np.testing.assert_allclose(np.array(b["mean_predicted"])[ok], mean)


def test_temperature_fit_recovers_known_temperature() -> None:
    rng = np.random.default_rng(8)
    true_logit = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < M.sigmoid(true_logit)).astype(int)
    t = M.fit_temperature(true_logit * 3.0, y)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.08)
    assert sk.log_loss(y, M.sigmoid(true_logit * 3 / t)) < sk.log_loss(y, M.sigmoid(true_logit * 3))


def test_bootstrap_interval_contains_point_and_is_reproducible() -> None:
    y, s = _fixed(9)
    a = M.bootstrap_ci(M.roc_auc, y, s, n_boot=200, seed=1)
    b = M.bootstrap_ci(M.roc_auc, y, s, n_boot=200, seed=1)
    assert a == b
    assert a["ci_low"] <= a["value"] <= a["ci_high"]
    assert a["value"] == pytest.approx(sk.roc_auc_score(y, s))


def test_sigmoid_is_stable() -> None:
    x = np.array([-1000.0, -10, 0, 10, 1000])
    out = M.sigmoid(x)
    assert np.isfinite(out).all() and out[0] == 0.0 and out[2] == 0.5 and out[-1] == 1.0
