"""``triage-node simulate``: the argument parser and the call into :mod:`worklist.benefit`.

Light at import (the parser is built for every ``triage-node`` command); the
simulation's modules are imported when the command runs.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime
from typing import Any

__all__ = ["add_simulate_command", "run_simulate_command"]

UTILISATIONS = "0.7,0.8,0.9,0.95,0.98"


def add_simulate_command(sub: Any) -> None:
    """Add ``simulate`` to the ``triage-node`` subcommands (run by
    :func:`run_simulate_command`).

    Parameters
    ----------
    sub : argparse._SubParsersAction
    """
    p = sub.add_parser(
        "simulate",
        help="measure what triage changes: a reading-order simulation on scored, labelled studies",
    )
    p.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="predictions.csv of 'triage-model evaluate' (repeatable)",
    )
    p.add_argument(
        "--database",
        action="store_true",
        help="use the node's own database: latest results and the radiologists' labels",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold (default: metrics.json beside the predictions)",
    )
    p.add_argument("--out", required=True, help="folder for the report, summary.csv and plots")
    p.add_argument(
        "--seeds", type=int, default=20, help="repeated runs per policy, for the 95 %% intervals"
    )
    p.add_argument("--readers", type=int, default=2, help="radiologists reading at once")
    p.add_argument(
        "--cap-minutes",
        type=float,
        default=None,
        help="wait cap (default: the node's wait_cap_minutes)",
    )
    p.add_argument(
        "--high-confidence", type=float, default=None, help="default: the node's high_confidence"
    )
    p.add_argument("--reading-median", type=float, default=None, help="normal read, s")
    p.add_argument(
        "--reading-sigma", type=float, default=None, help="lognormal sigma of reading times"
    )
    p.add_argument(
        "--abnormal-factor",
        type=float,
        default=None,
        help="abnormal read time over a normal one",
    )
    p.add_argument(
        "--reading-times",
        default=None,
        help="CSV with a 'seconds' column of reading durations to fit",
    )
    p.add_argument(
        "--arrivals",
        default=None,
        help="CSV with an 'arrival' column (ISO time or seconds) to replay",
    )
    p.add_argument("--utilisations", default=UTILISATIONS, help="comma list (0.9 is always run)")
    p.add_argument(
        "--realistic-utilisation",
        type=float,
        default=0.75,
        help="mean load of the realistic-day scenario",
    )
    p.add_argument("--hours", type=float, default=48.0, help="measured hours per seed")
    p.add_argument("--no-plots", action="store_true", help="write the markdown and CSV only")
    p.set_defaults(run=run_simulate_command)


def _read_column(path: str, column: str) -> list[str]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if column not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: no column {column!r}")
        return [row[column] for row in reader if (row[column] or "").strip()]


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.strip()).timestamp()


def _command_line(args: Any) -> str:
    import shlex

    words = ["triage-node", "simulate"]
    for spec in args.predictions:
        words += ["--predictions", spec]
    for name in ("database", "no_plots"):
        if getattr(args, name):
            words.append("--" + name.replace("_", "-"))
    for name in (
        "threshold",
        "out",
        "seeds",
        "readers",
        "cap_minutes",
        "high_confidence",
        "reading_median",
        "reading_sigma",
        "abnormal_factor",
        "reading_times",
        "arrivals",
        "utilisations",
        "realistic_utilisation",
        "hours",
    ):
        value = getattr(args, name)
        if value is not None:
            words += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(words)


def run_simulate_command(args: Any, settings: Any) -> int:
    """Run ``triage-node simulate`` (see :func:`add_simulate_command`).

    Parameters
    ----------
    args : argparse.Namespace
    settings : Settings

    Returns
    -------
    int
        0, or 2 with a one-line message on bad input.
    """
    from worklist import simulate as sim
    from worklist.benefit import Input, cases_from_database, load_predictions, run_benefit

    try:
        inputs = []
        for spec in args.predictions:
            name, _, path = spec.rpartition("=")
            inputs.append(load_predictions(path, name=name or None, threshold=args.threshold))
        durations: list[float] = []
        if args.database:
            from worklist.core.db import open_database

            database = open_database(settings)
            try:
                with database.session_factory() as session:
                    cases, durations = cases_from_database(session)
            finally:
                database.dispose()
            if not cases:
                raise ValueError("the database holds no triaged study with a radiologist's label")
            inputs.append(Input("node database", cases, "node database", None))
        if not inputs:
            raise ValueError("give --predictions PATH and/or --database")
        defaults = sim.ReadingTimes()
        source = "published summaries, see worklist/simulate.py ReadingTimes"
        median, sigma = defaults.normal_median_s, defaults.sigma
        if args.reading_times:
            durations = [float(v) for v in _read_column(args.reading_times, "seconds")]
        if len(durations) >= 20:
            median, sigma = sim.fit_lognormal(durations)
            source = f"fitted to {len(durations)} reading durations"
        reading = sim.ReadingTimes(
            normal_median_s=args.reading_median or median,
            abnormal_factor=args.abnormal_factor or defaults.abnormal_factor,
            sigma=args.reading_sigma or sigma,
        )
        arrivals = None
        if args.arrivals:
            times = sorted(_seconds(v) for v in _read_column(args.arrivals, "arrival"))
            arrivals = [t - times[0] for t in times]
        utilisations = [float(u) for u in args.utilisations.split(",") if u.strip()]
        if 0.9 not in utilisations:
            utilisations.append(0.9)
    except (OSError, ValueError) as exc:
        print(f"triage-node simulate: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    report = run_benefit(
        inputs,
        args.out,
        seeds=args.seeds,
        readers=args.readers,
        cap_minutes=args.cap_minutes or settings.wait_cap_minutes,
        high_confidence=args.high_confidence or settings.high_confidence,
        reading=reading,
        reading_source=source,
        utilisations=sorted(utilisations),
        realistic_utilisation=args.realistic_utilisation,
        hours=args.hours,
        arrivals=arrivals,
        command=_command_line(args),
        plots=not args.no_plots,
    )
    print(report)  # noqa: T201 - CLI output
    return 0
