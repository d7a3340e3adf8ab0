"""The reading-order simulator: queueing core against Erlang C, the real priority rules,
the report writer, and the turnaround definitions it shares with the live figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from worklist import benefit
from worklist import simulate as sim
from worklist.turnaround import StudyTimes, daily_trend, over_cap, percentile, summarize, wait

NORMAL = sim.Case(False, 0.05, "normal")
ABNORMAL = sim.Case(True, 0.95, "abnormal")


def _fixed_stream(arrival: list[float], reading: list[float], cases: list[sim.Case]) -> sim.Stream:
    return sim.Stream(
        arrival=np.asarray(arrival, dtype=float),
        reading=np.asarray(reading, dtype=float),
        cases=cases,
        measured=np.ones(len(arrival), dtype=bool),
    )


@pytest.mark.parametrize(("utilisation", "servers"), [(0.5, 1), (0.7, 2), (0.8, 3)])
def test_fifo_mean_wait_matches_erlang_c(utilisation: float, servers: int) -> None:
    mean_service = 60.0
    rate = utilisation * servers / mean_service
    waits = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        arrival = sim.poisson_arrivals(rate, 200_000 / rate, rng)
        stream = sim.Stream(
            arrival=arrival,
            reading=rng.exponential(mean_service, len(arrival)),
            cases=[NORMAL] * len(arrival),
            measured=arrival >= 0.02 * arrival[-1],  # after a short warm-up
        )
        claimed, _completed = sim.simulate(stream, "fifo", readers=servers)
        waits.append(np.mean((claimed - arrival)[stream.measured]))
    expected = sim.erlang_c_wait(rate, mean_service, servers)
    assert np.mean(waits) == pytest.approx(expected, rel=0.05)


def test_node_policy_calls_the_real_priority_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # One reader busy with study 0 until t=100; a normal (t=1) and an abnormal (t=2) wait.
    stream = _fixed_stream([0, 1, 2], [100, 10, 10], [NORMAL, NORMAL, ABNORMAL])
    claimed, _ = sim.simulate(stream, "node", readers=1, wait_cap_s=3600)
    assert claimed[2] < claimed[1]  # the abnormal study is read first
    fifo, _ = sim.simulate(stream, "fifo", readers=1)
    assert fifo[1] < fifo[2]

    # Swap the levels of AI normal and AI abnormal in the node's own rules.
    real = sim.priority_rules.compute_priority
    Priority = sim.priority_rules.Priority

    def swapped(**kwargs: object) -> object:
        decision = real(**kwargs)
        swap = {Priority.NORMAL: Priority.ABNORMAL_HIGH, Priority.ABNORMAL_HIGH: Priority.NORMAL}
        return type(decision)(swap.get(decision.priority, decision.priority), decision.reason)

    monkeypatch.setattr(sim.priority_rules, "compute_priority", swapped)
    claimed, _ = sim.simulate(stream, "node", readers=1, wait_cap_s=3600)
    assert claimed[1] < claimed[2]


def test_node_policy_applies_the_wait_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # The normal study has waited 99 s when the reader frees up at t=100.
    stream = _fixed_stream([0, 1, 2], [100, 10, 10], [NORMAL, NORMAL, ABNORMAL])
    capped, _ = sim.simulate(stream, "node", readers=1, wait_cap_s=60)
    assert capped[1] < capped[2]  # overdue beats abnormal
    loose, _ = sim.simulate(stream, "node", readers=1, wait_cap_s=600)
    assert loose[2] < loose[1]
    # And the cap is the real sort key's: without its OVERDUE rule the order flips back.
    monkeypatch.setattr(
        sim.priority_rules,
        "worklist_sort_key",
        lambda priority, arrived_at, *, now, wait_cap: (int(priority), arrived_at),
    )
    uncapped, _ = sim.simulate(stream, "node", readers=1, wait_cap_s=60)
    assert uncapped[2] < uncapped[1]


def test_score_policy_sorts_by_probability_without_cap() -> None:
    low, high = sim.Case(True, 0.4, "abnormal"), sim.Case(True, 0.8, "abnormal")
    stream = _fixed_stream([0, 1, 2], [10_000, 10, 10], [NORMAL, low, high])
    claimed, completed = sim.simulate(stream, "score", readers=1, wait_cap_s=60)
    assert claimed[2] == 10_000 and claimed[1] == 10_010
    assert np.all(completed - claimed == stream.reading)


def test_staffing_schedule_adds_readers_at_the_hour() -> None:
    schedule = [1] * 24
    schedule[1] = 2  # a second reader from 01:00
    stream = _fixed_stream([0, 10], [7200, 60], [NORMAL, NORMAL])
    claimed, _ = sim.simulate(stream, "fifo", readers=schedule)
    assert claimed[1] == 3600.0


def test_reading_times_abnormal_longer_and_fit() -> None:
    reading = sim.ReadingTimes(normal_median_s=60, abnormal_factor=1.5, sigma=0.5)
    rng = np.random.default_rng(3)
    labels = np.array([False] * 20_000 + [True] * 20_000)
    times = reading.draw(labels, rng)
    median, sigma = sim.fit_lognormal(times[~labels])
    assert median == pytest.approx(60, rel=0.03)
    assert sigma == pytest.approx(0.5, rel=0.03)
    assert np.median(times[labels]) / np.median(times[~labels]) == pytest.approx(1.5, rel=0.05)
    with pytest.raises(ValueError, match="two positive"):
        sim.fit_lognormal([5.0])


def test_turnaround_definitions() -> None:
    day = 86400.0
    studies = [
        StudyTimes(arrival=day + 0, claimed=day + 600, completed=day + 700),
        StudyTimes(arrival=day + 100, claimed=day + 4000, completed=day + 4100),
        StudyTimes(arrival=2 * day + 50),  # still waiting
    ]
    now = 2 * day + 50 + 7200
    assert wait(studies[2], now) == 7200
    assert over_cap(3600.0, 3600.0) is False and over_cap(3600.1, 3600.0) is True
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert summarize([]).p50 is None
    trend = daily_trend(studies, now=now, cap_seconds=3600)
    assert [b.day for b in trend] == ["1970-01-02", "1970-01-03"]
    assert trend[0].arrived == 2 and trend[0].turnaround.p50 == pytest.approx(2350)
    assert trend[0].over_cap == 1  # waited 3900 s
    assert trend[1].turnaround.n == 0 and trend[1].over_cap == 1


def _tiny_predictions(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    path = folder / "predictions.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "probability"])
        for k in range(40):
            abnormal = k % 2 == 0
            p = float(np.clip(rng.normal(0.75 if abnormal else 0.25, 0.2), 0, 1))
            writer.writerow([f"img{k}.png", "abnormal" if abnormal else "normal", f"{p:.4f}"])
        writer.writerow(["broken.png", "normal", ""])  # not evaluated
    (folder / "metrics.json").write_text(json.dumps({"thresholds": {"balanced": 0.5}}))
    return path


def test_report_writer_on_a_tiny_predictions_file(tmp_path: Path) -> None:
    data = benefit.load_predictions(_tiny_predictions(tmp_path / "eval"), name="tiny")
    assert data.threshold == 0.5 and len(data.cases) == 41
    assert data.cases[-1].decision is None
    report = benefit.run_benefit(
        [data],
        tmp_path / "out",
        seeds=3,
        utilisations=(0.7, 0.9),
        hours=4.0,
        command="triage-node simulate ...",
        plots=True,
    )
    text = report.read_text()
    assert "## tiny" in text and "triage-node simulate ..." in text
    for label in benefit.POLICY_LABELS.values():
        assert label in text
    assert "### Goal at utilisation 0.9" in text
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert {r["policy"] for r in rows} == {"fifo", "node", "score"}
    assert {r["model"] for r in rows} >= {"shipped", "oracle", "random"}
    pytest.importorskip("matplotlib")
    assert (tmp_path / "out" / "turnaround_cdf.png").stat().st_size > 1000
    assert "turnaround_cdf.png" in text


def test_predictions_without_threshold_is_a_clear_error(tmp_path: Path) -> None:
    path = _tiny_predictions(tmp_path / "eval")
    (path.parent / "metrics.json").unlink()
    with pytest.raises(ValueError, match="--threshold"):
        benefit.load_predictions(path)
    assert benefit.load_predictions(path, threshold=0.3).threshold == 0.3


def test_oracle_beats_random_on_the_mean_turnaround(tmp_path: Path) -> None:
    data = benefit.load_predictions(_tiny_predictions(tmp_path / "eval"))
    pools = benefit.model_variants(data, np.random.default_rng(1))
    rows = benefit.run_seeds(
        pools,
        benefit.Scenario("u0.9", 0.9, 2, False, 24.0),
        seeds=range(1, 6),
        reading=sim.ReadingTimes(),
        cap_s=3600,
        high_confidence=0.9,
        policies=("node",),
    )
    by_model = {
        m: np.mean([r["benefit_mean"] for r in rows if r["model"] == m])
        for m in ("oracle", "random")
    }
    assert by_model["oracle"] > by_model["random"] + 0.1


def test_cli_simulate_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from triage.cli import main

    for key in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "node"))
    path = _tiny_predictions(tmp_path / "eval")
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            "--predictions",
            f"tiny={path}",
            "--out",
            str(out),
            "--seeds",
            "2",
            "--hours",
            "2",
            "--utilisations",
            "0.9",
            "--no-plots",
        ]
    )
    assert code == 0
    text = (out / "TRIAGE_BENEFIT.md").read_text()
    assert f"triage-node simulate --predictions tiny={path}" in text
    assert "wait cap 60 min" in text  # the node's default wait_cap_minutes
    assert main(["simulate", "--out", str(out)]) == 2  # no input: a clear error


def test_given_arrival_times_are_replayed(tmp_path: Path) -> None:
    data = benefit.load_predictions(_tiny_predictions(tmp_path / "eval"))
    arrivals = [60.0 * k for k in range(200)]  # one study a minute
    scenario = benefit.Scenario("given", float("nan"), 1, arrivals=tuple(arrivals))
    rows = benefit.run_seeds(
        {"shipped": data.cases},
        scenario,
        seeds=[1, 2],
        reading=sim.ReadingTimes(),
        cap_s=3600,
        high_confidence=0.9,
    )
    assert {r["studies"] for r in rows} == {200}
    report = benefit.run_benefit(
        [data],
        tmp_path / "out",
        seeds=2,
        utilisations=(0.9,),
        hours=2.0,
        arrivals=arrivals,
        plots=False,
    )
    assert "### Given arrival times" in report.read_text()
