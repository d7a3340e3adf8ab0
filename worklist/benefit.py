"""Measured triage benefit: the simulator run over seeds, loads and models, and its report.

:func:`run_benefit` replays reading days (:mod:`worklist.simulate`) on labelled,
scored studies and writes ``TRIAGE_BENEFIT.md``, ``summary.csv`` and plots:

- per policy (FIFO, the node's rules with the wait cap, score-sorted without cap),
  with 95 % intervals over seeds: abnormal turnaround mean, p50 and p90; normal
  turnaround; the longest wait of any study; the share of studies over the cap;
- the benefit (abnormal p50 turnaround against FIFO, paired on the same stream)
  against utilisation (0.7 to 0.98) for the shipped model, an oracle (the labels)
  and a random score (the shipped scores shuffled across studies: the same share
  flagged, no information);
- the node's rules with other wait caps and ``high_confidence`` values, from which
  the defaults are chosen.

Inputs: a ``predictions.csv`` of ``triage-model evaluate`` (``image,label,probability``;
the operating threshold from the ``metrics.json`` beside it, or given), or the node's
own database (latest results and the radiologists' labels; reading durations from
``claimed -> completed`` when there are enough to fit).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from worklist import simulate as sim
from worklist.turnaround import over_cap, summarize, turnaround, wait

__all__ = [
    "Input",
    "Scenario",
    "cases_from_database",
    "load_predictions",
    "run_benefit",
]

log = logging.getLogger(__name__)

POLICY_LABELS = {
    "fifo": "FIFO (no triage)",
    "node": "node rules + cap",
    "score": "score-sorted, no cap",
}
UTILISATIONS = (0.7, 0.8, 0.9, 0.95, 0.98)
CAPS_MIN = (15.0, 30.0, 60.0, 120.0, 240.0)
HIGH_CONFIDENCES = (0.5, 0.9, 1.0)
METRICS = (
    "abnormal_mean",
    "abnormal_p50",
    "abnormal_p90",
    "normal_mean",
    "normal_p50",
    "normal_p90",
    "max_wait",
    "over_cap",
    "over_cap_plus_read",
    "read_p95",
    "read_max",
)


@dataclass(frozen=True)
class Input:
    """A named set of scored, labelled studies."""

    name: str
    cases: list[sim.Case]
    source: str
    threshold: float | None


@dataclass(frozen=True)
class Scenario:
    """A reading load.

    Attributes
    ----------
    name : str
    utilisation : float
        Mean arrival rate x mean reading time / readers.
    readers : int or tuple of 24 int
        Constant, or a staffing schedule per hour of the day.
    profile : bool
        Arrivals follow :data:`worklist.simulate.DAILY_PROFILE` (else constant rate).
    hours : float
        Measured time per seed (a warm-up of 10 % (constant) or one day (profile)
        before it is simulated and not measured).
    arrivals : tuple of float, optional
        Given arrival times (s); then ``utilisation``, ``profile`` and ``hours`` are
        not used and every study is measured.
    """

    name: str
    utilisation: float
    readers: int | tuple[int, ...] = 2
    profile: bool = False
    hours: float = 48.0
    arrivals: tuple[float, ...] | None = None


# Inputs ------------------------------------------------------------------------------


def load_predictions(
    path: str | Path,
    *,
    name: str | None = None,
    threshold: float | None = None,
    operating_point: str = "balanced",
) -> Input:
    """Read a ``predictions.csv`` written by ``triage-model evaluate``.

    Parameters
    ----------
    path : str or Path
        Columns ``image,label,probability`` (probability empty or NaN: not evaluated).
    name : str, optional
        Defaults to the folder name.
    threshold : float, optional
        Decision threshold; default: ``thresholds[operating_point]`` of the
        ``metrics.json`` in the same folder.
    operating_point : str

    Returns
    -------
    Input

    Raises
    ------
    ValueError
        When the file lacks the columns, has no rows, or no threshold can be found.
    """
    path = Path(path)
    if threshold is None:
        metrics = path.parent / "metrics.json"
        try:
            threshold = float(json.loads(metrics.read_text())["thresholds"][operating_point])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"no decision threshold: give --threshold, or keep the metrics.json of"
                f" 'triage-model evaluate' (thresholds.{operating_point}) beside {path}"
            ) from exc
    cases = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"label", "probability"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            label = row["label"].strip().lower()
            if label not in ("normal", "abnormal"):
                raise ValueError(f"{path}: label must be normal or abnormal, got {label!r}")
            text = (row["probability"] or "").strip()
            p = float(text) if text else math.nan
            if math.isfinite(p):
                cases.append(
                    sim.Case(label == "abnormal", p, "abnormal" if p >= threshold else "normal")
                )
            else:
                cases.append(sim.Case(label == "abnormal", None, None))
    if not cases:
        raise ValueError(f"{path}: no predictions")
    return Input(name or path.parent.name, cases, str(path), threshold)


def cases_from_database(session: Any) -> tuple[list[sim.Case], list[float]]:
    """Labelled studies and reading durations from the node's own database.

    A study counts when it has a triage result and a radiologist's label (the
    latest feedback); its case is its latest result (probability, decision) and its
    requested priority. Reading durations are ``completed_at - claimed_at`` of the
    completed reads.

    Parameters
    ----------
    session : sqlalchemy.orm.Session

    Returns
    -------
    cases : list of Case
    durations : list of float
        Seconds.
    """
    from sqlalchemy import select

    from worklist.core.clock import as_utc
    from worklist.tables import Feedback, Study, StudyRead, TriageResult

    labels: dict[int, str] = {}
    for study_id, label in session.execute(
        select(Feedback.study_id, Feedback.label).order_by(Feedback.updated_at, Feedback.id)
    ):
        labels[study_id] = label
    latest: dict[int, tuple[Any, str | None]] = {}
    for result, requested in session.execute(
        select(TriageResult, Study.requested_priority)
        .join(Study, Study.id == TriageResult.study_id)
        .order_by(TriageResult.study_id, TriageResult.revision)
    ):
        latest[result.study_id] = (result, requested)
    cases = []
    for study_id, label in labels.items():
        if study_id not in latest or label not in ("normal", "abnormal"):
            continue
        result, requested = latest[study_id]
        triaged = result.status == "triaged"
        cases.append(
            sim.Case(
                abnormal=label == "abnormal",
                probability=result.probability if triaged else None,
                decision=result.decision if triaged else None,
                requested_priority=requested,
            )
        )
    durations = [
        (as_utc(done) - as_utc(start)).total_seconds()
        for start, done in session.execute(
            select(StudyRead.claimed_at, StudyRead.completed_at).where(
                StudyRead.completed_at.is_not(None)
            )
        )
    ]
    return cases, durations


def model_variants(data: Input, rng: np.random.Generator) -> dict[str, list[sim.Case]]:
    """The shipped scores, an oracle and a random score on the same studies.

    Parameters
    ----------
    data : Input
    rng : numpy.random.Generator
        For the shuffle of the random score.

    Returns
    -------
    dict
        ``shipped``, ``oracle`` (probability 1/0 from the label, decided by it) and
        ``random`` (the shipped probabilities and decisions shuffled across studies).
    """
    cases = data.cases
    oracle = [
        replace(
            c,
            probability=1.0 if c.abnormal else 0.0,
            decision="abnormal" if c.abnormal else "normal",
        )
        for c in cases
    ]
    order = rng.permutation(len(cases))
    shuffled = [
        replace(c, probability=cases[k].probability, decision=cases[k].decision)
        for c, k in zip(cases, order, strict=True)
    ]
    return {"shipped": list(cases), "oracle": oracle, "random": shuffled}


# Simulation over seeds ---------------------------------------------------------------


def _stream(
    pool: Sequence[sim.Case], scenario: Scenario, reading: sim.ReadingTimes, seed: int
) -> sim.Stream:
    rng = np.random.default_rng(seed)
    share_abnormal = sum(c.abnormal for c in pool) / len(pool)
    mean_read = share_abnormal * reading.mean(True) + (1 - share_abnormal) * reading.mean(False)
    rate = scenario.utilisation * float(np.mean(scenario.readers)) / mean_read
    measured_s = scenario.hours * 3600
    if scenario.arrivals is not None:
        warmup = 0.0
        arrival = np.asarray(scenario.arrivals, dtype=float)
    elif scenario.profile:
        warmup = 86400.0
        arrival = sim.profile_arrivals(rate, warmup + measured_s, rng)
    else:
        warmup = 0.1 * measured_s
        arrival = sim.poisson_arrivals(rate, warmup + measured_s, rng)
    return sim.make_stream(arrival, pool, reading, rng, warmup_s=warmup)


def _metrics(
    stream: sim.Stream,
    claimed: np.ndarray,
    completed: np.ndarray,
    *,
    cap_s: float,
    read_p95: float,
) -> dict[str, float]:
    times = sim.study_times(stream, claimed, completed)
    abnormal = summarize(turnaround(t) for t in times if t.truth == "abnormal")
    normal = summarize(turnaround(t) for t in times if t.truth == "normal")
    waits = [wait(t, now=math.inf) for t in times]
    n = max(1, len(waits))
    return {
        "abnormal_mean": abnormal.mean,
        "abnormal_p50": abnormal.p50,
        "abnormal_p90": abnormal.p90,
        "normal_mean": normal.mean,
        "normal_p50": normal.p50,
        "normal_p90": normal.p90,
        "max_wait": max(waits, default=math.nan),
        "over_cap": sum(over_cap(w, cap_s) for w in waits) / n,
        "over_cap_plus_read": sum(over_cap(w, cap_s + read_p95) for w in waits) / n,
        "read_p95": read_p95,
        "read_max": float(stream.reading[stream.measured].max(initial=0.0)),
        "studies": len(times),
    }


def run_seeds(
    pools: dict[str, Sequence[sim.Case]],
    scenario: Scenario,
    *,
    seeds: Sequence[int],
    reading: sim.ReadingTimes,
    cap_s: float,
    high_confidence: float,
    policies: Sequence[str] = ("node", "score"),
) -> list[dict[str, Any]]:
    """Every policy and model on the same streams, one row per seed, model and policy.

    The stream (arrivals, studies, reading times) depends on the seed only; the
    models differ in the scores of the same studies; FIFO ignores the scores and is
    run once per seed (``model`` ``-``).

    Returns
    -------
    list of dict
        ``seed``, ``model``, ``policy``, the :data:`METRICS` and ``benefit_p50``
        (1 - abnormal p50 / FIFO's, paired on the seed) and ``benefit_mean``.
    """
    rows = []
    first = next(iter(pools.values()))
    for seed in seeds:
        base = _stream(first, scenario, reading, seed)
        read_p95 = float(np.percentile(base.reading, 95))
        claimed, completed = sim.simulate(base, "fifo", readers=scenario.readers)
        fifo = _metrics(base, claimed, completed, cap_s=cap_s, read_p95=read_p95)
        rows.append(
            {
                "seed": seed,
                "model": "-",
                "policy": "fifo",
                **fifo,
                "benefit_p50": 0.0,
                "benefit_mean": 0.0,
            }
        )
        for model, pool in pools.items():
            stream = replace(base, cases=[pool[k] for k in base.picks])
            for policy in policies:
                claimed, completed = sim.simulate(
                    stream,
                    policy,
                    readers=scenario.readers,
                    wait_cap_s=cap_s,
                    high_confidence=high_confidence,
                )
                m = _metrics(stream, claimed, completed, cap_s=cap_s, read_p95=read_p95)
                m["benefit_p50"] = 1 - m["abnormal_p50"] / fifo["abnormal_p50"]
                m["benefit_mean"] = 1 - m["abnormal_mean"] / fifo["abnormal_mean"]
                rows.append({"seed": seed, "model": model, "policy": policy, **m})
    return rows


def _t975(dof: int) -> float:
    # Student t 97.5 % quantile (Cornish-Fisher expansion; < 0.5 % off for dof >= 4).
    z = 1.959964
    if dof <= 0:
        return math.nan
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean over seeds and its 95 % t interval.

    Parameters
    ----------
    values : sequence of float

    Returns
    -------
    mean, low, high : float
    """
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(data) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if len(data) < 2:
        return (mean, math.nan, math.nan)
    half = _t975(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
    return (mean, mean - half, mean + half)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95 % interval over seeds per (model, policy) and extra keys.

    Returns
    -------
    list of dict
        The group keys, ``seeds``, and ``<metric>``, ``<metric>_lo``, ``<metric>_hi``.
    """
    keys = [
        k for k in rows[0] if k not in (*METRICS, "seed", "studies", "benefit_p50", "benefit_mean")
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group, members in groups.items():
        agg: dict[str, Any] = dict(zip(keys, group, strict=True))
        agg["seeds"] = len(members)
        agg["studies"] = int(np.mean([m["studies"] for m in members]))
        for metric in (*METRICS, "benefit_p50", "benefit_mean"):
            mean, lo, hi = mean_ci([m[metric] for m in members])
            agg[metric], agg[f"{metric}_lo"], agg[f"{metric}_hi"] = mean, lo, hi
        out.append(agg)
    return out


# Report ------------------------------------------------------------------------------


def _minutes(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if not math.isfinite(lo):
        return f"{value / 60:.1f}"
    return f"{value / 60:.1f} [{lo / 60:.1f}, {hi / 60:.1f}]"


def _pct(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if not math.isfinite(lo):
        return f"{100 * value:.1f} %"
    return f"{100 * value:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def _cell(agg: dict[str, Any], metric: str) -> str:
    fmt = _pct if metric.startswith(("over_cap", "benefit")) else _minutes
    return fmt(agg[metric], agg[f"{metric}_lo"], agg[f"{metric}_hi"])


@dataclass
class _Section:
    data: Input
    headline: list[dict[str, Any]]
    headline_rows: list[dict[str, Any]]
    realistic: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    caps: list[dict[str, Any]]
    levels: list[dict[str, Any]]
    curves: dict[str, dict[str, np.ndarray]]
    given: list[dict[str, Any]] = field(default_factory=list)


def _policy_table(aggs: Sequence[dict[str, Any]], cap_min: float) -> list[str]:
    lines = [
        "| policy | abnormal mean | abnormal p50 | abnormal p90 | normal mean | normal p90"
        f" | longest wait | over cap ({cap_min:g} min) | over cap + p95 read"
        " | abnormal p50 vs FIFO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agg in aggs:
        if agg["model"] not in ("-", "shipped"):
            continue
        lines.append(
            f"| {POLICY_LABELS[agg['policy']]} | {_cell(agg, 'abnormal_mean')}"
            f" | {_cell(agg, 'abnormal_p50')} | {_cell(agg, 'abnormal_p90')}"
            f" | {_cell(agg, 'normal_mean')} | {_cell(agg, 'normal_p90')}"
            f" | {_cell(agg, 'max_wait')} | {_cell(agg, 'over_cap')}"
            f" | {_cell(agg, 'over_cap_plus_read')}"
            f" | {'-' if agg['policy'] == 'fifo' else _cell(agg, 'benefit_p50')} |"
        )
    return lines


def _find(aggs: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any]:
    for agg in aggs:
        if all(agg.get(k) == v for k, v in match.items()):
            return agg
    raise KeyError(match)


def _goal_lines(section: _Section, *, cap_s: float) -> list[str]:
    node = _find(section.headline, model="shipped", policy="node")
    node_rows = [r for r in section.headline_rows if r["policy"] == "node"]
    sweep = {
        m: _find(section.sweep, utilisation=0.9, model=m, policy="node")
        for m in ("shipped", "oracle", "random")
    }
    reached = node["benefit_p50"] >= 0.30
    # The model adds to the ordering when its mean benefit clearly beats a random score's.
    by_chance = not node["benefit_mean_lo"] > sweep["random"]["benefit_mean"]
    longest = max(r["max_wait"] for r in node_rows)
    read_p95 = float(np.mean([r["read_p95"] for r in node_rows]))
    read_max = float(np.mean([r["read_max"] for r in node_rows]))
    over = sum(round(r["over_cap_plus_read"] * r["studies"]) for r in node_rows)
    studies = sum(r["studies"] for r in node_rows)
    verdict = "reached" if reached else "not reached"
    if reached and by_chance:
        verdict = "reached in the figure, but not by the model"
    return [
        "",
        "### Goal at utilisation 0.9",
        "",
        f"- Abnormal p50 turnaround at least 30 % shorter than FIFO: {_cell(node, 'benefit_p50')}"
        f" -> **{verdict}**. The same rules with a random score flagging as many studies give"
        f" {100 * sweep['random']['benefit_p50']:.1f} % (p50); on the *mean* abnormal"
        f" turnaround the shipped model gives {_cell(node, 'benefit_mean')}, an oracle"
        f" {100 * sweep['oracle']['benefit_mean']:.1f} %, a random score"
        f" {100 * sweep['random']['benefit_mean']:.1f} % (the mean moves only when the flags"
        " carry information).",
        f"- No study waits longer than the cap plus one reading time: the longest wait in"
        f" {len(node_rows)} seeds ({studies} studies) is {longest / 60:.1f} min, the cap"
        f" {cap_s / 60:g} min plus {(longest - cap_s) / 60:.1f} min; {over} studies waited longer"
        f" than the cap plus the 95th percentile read ({read_p95 / 60:.1f} min) -> **"
        + ("reached" if over == 0 else "not reached")
        + f"** against that bound; against the longest single read of a seed (mean"
        f" {read_max / 60:.1f} min) -> **"
        + (
            "reached"
            if all(r["max_wait"] <= cap_s + r["read_max"] for r in node_rows)
            else "not reached"
        )
        + "**. A study passes the cap behind reads in progress; when two pass it at once,"
        " the second waits for a second read.",
        "",
    ]


def write_report(
    sections: Sequence[_Section],
    out: Path,
    *,
    settings: dict[str, Any],
    command: str,
) -> Path:
    """Write ``TRIAGE_BENEFIT.md`` and ``summary.csv`` (no plotting here).

    Returns
    -------
    Path
        The markdown report.
    """
    out.mkdir(parents=True, exist_ok=True)
    reading: sim.ReadingTimes = settings["reading"]
    cap_min = settings["cap_s"] / 60
    lines = [
        "# Triage benefit: reading-order simulation",
        "",
        "Made by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"- Readers: {settings['readers']} radiologists, non-preemptive, each opens the first"
        " study of the worklist when free.",
        f"- Reading times: lognormal, normal median {reading.normal_median_s:g} s (mean"
        f" {reading.mean(False):.0f} s), abnormal x{reading.abnormal_factor:g} (mean"
        f" {reading.mean(True):.0f} s), sigma {reading.sigma:g}"
        f" ({settings['reading_source']}).",
        f"- Node rules: `compute_priority` and `worklist_sort_key` as the node runs them,"
        f" wait cap {cap_min:g} min, high_confidence {settings['high_confidence']:g}.",
        f"- {settings['seeds']} seeds per figure; [95 % interval of the mean over seeds]."
        " The benefit is 1 - abnormal p50 turnaround / FIFO's, paired on each seed's stream.",
        "- Turnaround = completed - arrival; wait = opened - arrival (`worklist/turnaround.py`,"
        " the same definitions as the live figures). Times in minutes.",
        "- 'over cap + p95 read': waits longer than the cap plus the 95th percentile"
        " reading time (the goal: no study waits longer than the cap plus one read).",
        "- Random score: the shipped scores shuffled across studies (same share flagged,"
        " no information); oracle: the labels.",
        "",
    ]
    for section in sections:
        data = section.data
        n_abn = sum(c.abnormal for c in data.cases)
        flagged = sum(c.decision == "abnormal" for c in data.cases)
        head = section.headline[0]
        lines += [
            f"## {data.name}",
            "",
            f"Input `{data.source}`: {len(data.cases)} studies, {n_abn} abnormal"
            f" ({100 * n_abn / len(data.cases):.0f} %), {flagged}"
            f" ({100 * flagged / len(data.cases):.0f} %) flagged abnormal at threshold"
            f" {f'{data.threshold:.4f}' if data.threshold is not None else 'stored'}."
            " Each simulated study is drawn from these with replacement.",
            "",
            f"### Utilisation 0.9, constant arrival rate (about {head['studies']} studies"
            " measured per seed)",
            "",
            *_policy_table(section.headline, cap_min),
            "",
            "### Realistic day: hourly arrival profile and staffing (1 to 3 readers), mean"
            f" utilisation {settings['realistic_utilisation']:g} (about 1 at 9-11 h),"
            " 3 days per seed",
            "",
            *_policy_table(section.realistic, cap_min),
            "",
            *(
                [
                    "### Given arrival times (`--arrivals`)",
                    "",
                    *_policy_table(section.given, cap_min),
                    "",
                ]
                if section.given
                else []
            ),
            "### Benefit against utilisation and model quality (node rules + cap)",
            "",
            "Reduction of the abnormal turnaround against FIFO, p50 and mean (shipped model with"
            " its 95 % interval). The p50 also falls with a random score when many studies are"
            " flagged (the median abnormal study is among those moved forward); the mean shows"
            " what the model's information adds.",
            "",
            "| utilisation | p50: shipped | oracle | random | mean: shipped | oracle | random"
            " | score-sorted p50 (shipped) | longest wait (min) FIFO / node / score |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for u in settings["utilisations"]:

            def get(
                model: str, policy: str = "node", u: float = u, sweep: Any = section.sweep
            ) -> dict[str, Any]:
                return _find(sweep, utilisation=u, model=model, policy=policy)

            cells = [_cell(get("shipped"), "benefit_p50")]
            cells += [f"{100 * get(m)['benefit_p50']:.1f} %" for m in ("oracle", "random")]
            cells += [_cell(get("shipped"), "benefit_mean")]
            cells += [f"{100 * get(m)['benefit_mean']:.1f} %" for m in ("oracle", "random")]
            cells.append(_cell(get("shipped", "score"), "benefit_p50"))
            cells.append(
                " / ".join(
                    f"{get(m, p)['max_wait'] / 60:.0f}"
                    for m, p in (("-", "fifo"), ("shipped", "node"), ("shipped", "score"))
                )
            )
            lines.append(f"| {u:g} | {' | '.join(cells)} |")
        lines += [
            "",
            "### Wait cap (node rules, shipped model)",
            "",
            "| scenario | cap (min) | abnormal p50 vs FIFO | normal p90 | longest wait"
            " | over cap | over cap + p95 read |",
            "|---|---|---|---|---|---|---|",
        ]
        for agg in section.caps:
            lines.append(
                f"| {agg['scenario']} | {agg['cap_min']:g} | {_cell(agg, 'benefit_p50')}"
                f" | {_cell(agg, 'normal_p90')} | {_cell(agg, 'max_wait')}"
                f" | {_cell(agg, 'over_cap')} | {_cell(agg, 'over_cap_plus_read')} |"
            )
        lines += [
            "",
            "### Priority levels: `high_confidence` (utilisation 0.9, shipped model)",
            "",
            "| high_confidence | abnormal p50 vs FIFO | abnormal p90 | longest wait |",
            "|---|---|---|---|",
        ]
        for agg in section.levels:
            lines.append(
                f"| {agg['high_confidence']:g} | {_cell(agg, 'benefit_p50')}"
                f" | {_cell(agg, 'abnormal_p90')} | {_cell(agg, 'max_wait')} |"
            )
        lines += _goal_lines(section, cap_s=settings["cap_s"])
    if settings.get("plots"):
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in settings["plots"]]
        lines.append("")
    report = out / "TRIAGE_BENEFIT.md"
    report.write_text("\n".join(lines))
    rows = [
        {"input": s.data.name, "scenario": a.get("scenario", ""), **a}
        for s in sections
        for a in (*s.headline, *s.realistic, *s.sweep, *s.caps, *s.levels)
    ]
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with (out / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return report


def write_plots(
    sections: Sequence[_Section], out: Path, *, utilisations: Sequence[float]
) -> list[Path]:
    """Turnaround CDFs per policy and benefit against utilisation (PNG).

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(len(sections), 2, figsize=(10, 3.6 * len(sections)), squeeze=False)
    for row, section in zip(axes, sections, strict=True):
        for ax, truth in zip(row, ("abnormal", "normal"), strict=True):
            for policy, curve in section.curves[truth].items():
                values = np.sort(curve) / 60
                ax.plot(
                    values, np.arange(1, len(values) + 1) / len(values), label=POLICY_LABELS[policy]
                )
            ax.set_title(f"{section.data.name}: {truth} studies, utilisation 0.9")
            ax.set_xlabel("turnaround (min)")
            ax.set_ylabel("share of studies")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "turnaround_cdf.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(sections), figsize=(5 * len(sections), 7), squeeze=False)
    for col, section in enumerate(sections):
        for ax, metric in zip(axes[:, col], ("benefit_p50", "benefit_mean"), strict=True):
            for model in ("shipped", "oracle", "random"):
                aggs = [
                    _find(section.sweep, utilisation=u, model=model, policy="node")
                    for u in utilisations
                ]
                ax.plot(
                    utilisations,
                    [100 * a[metric] for a in aggs],
                    marker="o",
                    label=f"node rules, {model}",
                )
                ax.fill_between(
                    utilisations,
                    [100 * a[f"{metric}_lo"] for a in aggs],
                    [100 * a[f"{metric}_hi"] for a in aggs],
                    alpha=0.2,
                )
            ax.axhline(
                30 if metric == "benefit_p50" else 0, color="grey", linestyle="--", linewidth=1
            )
            ax.set_title(section.data.name)
            ax.set_xlabel("utilisation")
            which = "p50" if metric == "benefit_p50" else "mean"
            ax.set_ylabel(f"abnormal {which} turnaround\nreduction vs FIFO (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "benefit_vs_utilisation.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def _section(
    data: Input,
    *,
    seeds: Sequence[int],
    reading: sim.ReadingTimes,
    readers: int,
    cap_s: float,
    high_confidence: float,
    utilisations: Sequence[float],
    realistic_utilisation: float,
    hours: float,
    arrivals: Sequence[float] | None = None,
) -> _Section:
    pools = model_variants(data, np.random.default_rng(20261129))
    common = {
        "seeds": seeds,
        "reading": reading,
        "cap_s": cap_s,
        "high_confidence": high_confidence,
    }
    headline_sc = Scenario("u0.9", 0.9, readers, False, hours)
    realistic_sc = Scenario(
        f"day u{realistic_utilisation:g}", realistic_utilisation, sim.DAILY_READERS, True, 72.0
    )
    shipped = {"shipped": pools["shipped"]}
    headline_rows = run_seeds(shipped, headline_sc, **common)
    realistic = aggregate(run_seeds(shipped, realistic_sc, **common))
    sweep = []
    for u in utilisations:
        rows = run_seeds(pools, Scenario(f"u{u:g}", u, readers, False, hours), **common)
        sweep += [{**a, "utilisation": u} for a in aggregate(rows)]
    caps = []
    for scenario in (headline_sc, realistic_sc):
        for cap_min in CAPS_MIN:
            rows = run_seeds(
                shipped, scenario, **{**common, "cap_s": cap_min * 60}, policies=("node",)
            )
            caps += [
                {**a, "scenario": scenario.name, "cap_min": cap_min}
                for a in aggregate(rows)
                if a["policy"] == "node"
            ]
    given = []
    if arrivals is not None:
        scenario = Scenario("given arrivals", math.nan, readers, arrivals=tuple(arrivals))
        given = aggregate(run_seeds(shipped, scenario, **common))
    levels = []
    for hc in HIGH_CONFIDENCES:
        rows = run_seeds(
            shipped, headline_sc, **{**common, "high_confidence": hc}, policies=("node",)
        )
        levels += [{**a, "high_confidence": hc} for a in aggregate(rows) if a["policy"] == "node"]
    # Pooled turnarounds of the first seeds for the CDF plot.
    curves: dict[str, dict[str, list[float]]] = {"abnormal": {}, "normal": {}}
    for seed in seeds[:5]:
        stream = _stream(pools["shipped"], headline_sc, reading, seed)
        for policy in ("fifo", "node", "score"):
            claimed, completed = sim.simulate(
                stream, policy, readers=readers, wait_cap_s=cap_s, high_confidence=high_confidence
            )
            for t in sim.study_times(stream, claimed, completed):
                curves[t.truth].setdefault(policy, []).append(turnaround(t))
    return _Section(
        data=data,
        headline=aggregate(headline_rows),
        headline_rows=headline_rows,
        realistic=realistic,
        sweep=sweep,
        caps=caps,
        levels=levels,
        curves={k: {p: np.asarray(v) for p, v in d.items()} for k, d in curves.items()},
        given=given,
    )


def run_benefit(
    inputs: Sequence[Input],
    out: str | Path,
    *,
    seeds: int = 20,
    readers: int = 2,
    cap_minutes: float = 60.0,
    high_confidence: float = 0.9,
    reading: sim.ReadingTimes | None = None,
    reading_source: str = "published summaries, see worklist/simulate.py ReadingTimes",
    utilisations: Sequence[float] = UTILISATIONS,
    realistic_utilisation: float = 0.75,
    hours: float = 48.0,
    arrivals: Sequence[float] | None = None,
    command: str = "",
    plots: bool = True,
) -> Path:
    """Simulate every input and write the report, the CSV and (with matplotlib) the plots.

    Parameters
    ----------
    inputs : sequence of Input
    out : str or Path
        Folder for ``TRIAGE_BENEFIT.md``, ``summary.csv`` and the PNGs.
    seeds : int
        Repetitions per figure.
    readers : int
    cap_minutes : float
        The wait cap of the node policy (and the "over cap" threshold of all).
    high_confidence : float
    reading : ReadingTimes, optional
    reading_source : str
        Where the reading-time parameters come from (printed in the report).
    utilisations : sequence of float
        The sensitivity sweep.
    realistic_utilisation : float
        Mean utilisation of the day with the hourly profile.
    hours : float
        Measured hours per seed at constant rate.
    arrivals : sequence of float, optional
        Arrival times (s) to replay as an extra scenario (``--arrivals``).
    command : str
        The command line, quoted in the report.
    plots : bool

    Returns
    -------
    Path
        The markdown report.
    """
    out = Path(out)
    reading = reading or sim.ReadingTimes()
    seed_list = list(range(1, seeds + 1))
    sections = []
    for data in inputs:
        log.info("simulating %s (%d studies)", data.name, len(data.cases))
        sections.append(
            _section(
                data,
                seeds=seed_list,
                reading=reading,
                readers=readers,
                cap_s=cap_minutes * 60,
                high_confidence=high_confidence,
                utilisations=utilisations,
                realistic_utilisation=realistic_utilisation,
                hours=hours,
                arrivals=arrivals,
            )
        )
    settings = {
        "reading": reading,
        "reading_source": reading_source,
        "readers": readers,
        "cap_s": cap_minutes * 60,
        "high_confidence": high_confidence,
        "seeds": seeds,
        "utilisations": list(utilisations),
        "realistic_utilisation": realistic_utilisation,
        "plots": [],
    }
    report = write_report(sections, out, settings=settings, command=command)
    if plots:
        try:
            settings["plots"] = write_plots(sections, out, utilisations=utilisations)
        except ImportError:
            log.warning(
                "matplotlib is not installed: wrote %s and summary.csv without plots"
                " (pip install 'cxr-triage-node[test]' for them)",
                report,
            )
        else:
            report = write_report(sections, out, settings=settings, command=command)
    return report
