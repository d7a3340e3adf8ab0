"""models.compare on synthetic scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from models.compare import ModelScores, compare_models, paired_metrics

POINTS = {"balanced": 0.5, "high_sensitivity": 0.3}


def test_hand_counted_sensitivity_specificity_and_brier() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p_champ = np.array([0.9, 0.6, 0.4, 0.2, 0.1, 0.35, 0.6, 0.2])
    p_chal = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.1, 0.2, 0.2])
    out = paired_metrics(
        y,
        ModelScores("a", p_champ, POINTS),
        ModelScores("b", p_chal, POINTS),
        applied="balanced",
        n_boot=200,
    )
    m = out["metrics"]
    assert out["n"] == 8 and out["n_abnormal"] == 4
    assert m["sensitivity@balanced"]["champion"]["value"] == pytest.approx(2 / 4)
    assert m["specificity@balanced"]["champion"]["value"] == pytest.approx(3 / 4)
    assert m["sensitivity@high_sensitivity"]["champion"]["value"] == pytest.approx(3 / 4)
    assert m["specificity@high_sensitivity"]["champion"]["value"] == pytest.approx(2 / 4)
    assert m["sensitivity@balanced"]["challenger"]["value"] == pytest.approx(1.0)
    assert m["specificity@balanced"]["challenger"]["value"] == pytest.approx(1.0)
    assert m["underdiagnosis_rate"]["champion"]["value"] == pytest.approx(0.5)
    assert m["underdiagnosis_rate"]["difference"]["value"] == pytest.approx(-0.5)
    assert m["brier"]["champion"]["value"] == pytest.approx(np.mean((p_champ - y) ** 2))
    assert m["roc_auc"]["challenger"]["value"] == pytest.approx(1.0)
    # 16 pairs: (0.9 > all), (0.6 > 0.1, 0.35, 0.2, 0.2 and ties 0.6), ...
    pairs = [(a > b) + 0.5 * (a == b) for a in p_champ[:4] for b in p_champ[4:]]
    assert m["roc_auc"]["champion"]["value"] == pytest.approx(np.mean(pairs))
    for entry in m.values():
        for who in ("champion", "challenger"):
            e = entry[who]
            assert e["ci_low"] <= e["value"] + 1e-12 and e["value"] <= e["ci_high"] + 1e-12


def test_identical_models_differ_by_nothing() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, 200), 0, 1)
    out = paired_metrics(
        y,
        ModelScores("a", p, POINTS),
        ModelScores("b", p.copy(), POINTS),
        applied="balanced",
        n_boot=300,
    )
    for entry in out["metrics"].values():
        d = entry["difference"]
        assert d["value"] == 0 and d["ci_low"] == 0 and d["ci_high"] == 0 and d["p_value"] == 1.0


def test_a_clearly_better_challenger_is_significant_and_a_noisy_one_is_not() -> None:
    rng = np.random.default_rng(7)
    n = 300
    y = rng.integers(0, 2, n)
    weak = 1 / (1 + np.exp(-(0.3 * (2 * y - 1) + rng.normal(0, 1, n))))  # AUC ~0.58
    strong = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(0, 1, n))))  # AUC ~0.99
    out = paired_metrics(
        y,
        ModelScores("weak", weak, POINTS),
        ModelScores("strong", strong, POINTS),
        applied="balanced",
        n_boot=500,
    )
    auc = out["metrics"]["roc_auc"]
    assert auc["champion"]["value"] < 0.7 and auc["challenger"]["value"] > 0.95
    assert auc["difference"]["ci_low"] > 0.2 and auc["difference"]["p_value"] < 0.01
    noisy = np.clip(weak + rng.normal(0, 0.01, n), 0, 1)
    same = paired_metrics(
        y,
        ModelScores("weak", weak, POINTS),
        ModelScores("noisy", noisy, POINTS),
        applied="balanced",
        n_boot=500,
    )["metrics"]["roc_auc"]["difference"]
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.05


def test_subgroups_are_compared_within_each_group() -> None:
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    champ = np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.1, 0.1])
    # The challenger misses both abnormal women.
    chal = np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.1, 0.1])
    sex = ["F", "F", "F", "F", "M", "M", "M", "M"]
    out = compare_models(
        y,
        ModelScores("a", champ, POINTS),
        ModelScores("b", chal, POINTS),
        applied="balanced",
        groups={"sex": sex},
        n_boot=100,
    )
    women = out["subgroups"]["sex"]["F"]["metrics"]["underdiagnosis_rate"]
    men = out["subgroups"]["sex"]["M"]["metrics"]["underdiagnosis_rate"]
    assert women["champion"]["value"] == 0 and women["challenger"]["value"] == 1
    assert men["difference"]["value"] == 0
    assert out["overall"]["metrics"]["sensitivity@balanced"]["difference"]["value"] == -0.5
    assert out["subgroups"]["sex"]["F"]["n"] == 4


def test_only_shared_operating_points_and_the_applied_one_is_required() -> None:
    y = np.array([1, 0])
    with pytest.raises(ValueError, match="applied operating point 'rule-out'"):
        paired_metrics(
            y,
            ModelScores("a", np.array([0.9, 0.1]), POINTS),
            ModelScores("b", np.array([0.9, 0.1]), {"rule-out": 0.1}),
            applied="rule-out",
        )
