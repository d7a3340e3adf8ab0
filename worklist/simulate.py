"""Reading-order simulator: a discrete-event simulation of radiologists and a worklist.

Studies arrive (a Poisson process, optionally with a daily profile, or given
timestamps); ``readers`` radiologists each open the first study of the worklist
as soon as they are free, read it for its reading time, and take the next
(non-preemptive; a read in progress is never interrupted). The order of the
worklist is the *policy*; every policy sees the **same stream** (arrival times,
studies and reading times), so that differences are the policy's alone:

``fifo``
    Oldest first (no triage).
``node``
    The node's own rules, by calling the real priority code: the stored level of
    each study comes from ``compute_priority`` and the order at each moment from
    ``worklist_sort_key`` with the wait cap (see :mod:`worklist.priority`).
``score``
    Highest AI probability first, no cap (the "sorted by score" worklist).

Reading times are lognormal, abnormal reads longer (:class:`ReadingTimes`).
AI results are taken to be available at arrival: the node's time to triage is
about 11 s (quiet period 10 s included, ``bench/TRIAGE.md``), against waits of
minutes. numpy only.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

# The ONE import of the node's priority rules, called through the module so that a test
# that changes a rule there changes the simulation.
from worklist import priority as priority_rules
from worklist.turnaround import StudyTimes

__all__ = [
    "DAILY_PROFILE",
    "DAILY_READERS",
    "POLICIES",
    "Case",
    "ReadingTimes",
    "Stream",
    "erlang_c_wait",
    "fit_lognormal",
    "make_stream",
    "poisson_arrivals",
    "profile_arrivals",
    "simulate",
]

#: Relative arrival rate per hour of the day (00-23 h, mean 1): a hospital's chest
#: radiographs (emergency department all day, wards and outpatients 8-18 h). An
#: assumption of the shape, not a measurement; ``--arrivals`` takes real timestamps.
_MORNING = (0.35, 0.3, 0.3, 0.3, 0.3, 0.35, 0.5, 0.9, 1.6, 1.9, 1.9, 1.8)  # 00-11 h
_AFTERNOON = (1.5, 1.5, 1.6, 1.5, 1.3, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # 12-23 h
DAILY_PROFILE: tuple[float, ...] = tuple(
    w * 24 / sum(_MORNING + _AFTERNOON) for w in _MORNING + _AFTERNOON
)

#: Radiologists reading per hour of the day (00-23 h) in the "realistic day": staffing
#: that follows :data:`DAILY_PROFILE` (3 in the day, 2 in the evening, 1 at night;
#: 2 on average). An assumption, as the profile.
DAILY_READERS: tuple[int, ...] = (1,) * 7 + (2,) + (3,) * 9 + (2,) * 5 + (1,) * 2

_EPOCH = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday 00:00 UTC; the simulation's t = 0


@dataclass(frozen=True)
class Case:
    """A scored study the stream draws from.

    Attributes
    ----------
    abnormal : bool
        The reference label.
    probability : float or None
        The model's calibrated probability (None: not evaluated).
    decision : str or None
        ``abnormal`` / ``normal`` at the operating point; None when not evaluated.
    requested_priority : str or None
        The hospital's requested priority, if any.
    """

    abnormal: bool
    probability: float | None
    decision: str | None
    requested_priority: str | None = None


@dataclass(frozen=True)
class ReadingTimes:
    """Lognormal reading times (seconds), abnormal reads longer.

    ``log(T) ~ Normal(log(median), sigma)``, with the median of an abnormal read
    ``abnormal_factor`` times that of a normal read.

    Default parameters and their sources:

    - ratio abnormal / normal ``1.40``: Shin et al., "The impact of artificial
      intelligence on the reading times of radiologists for chest radiographs",
      npj Digit Med 2023 (11 radiologists, 18,680 chest radiographs, unaided mean
      18.4 s when the AI found an abnormality against 13.1 s when it did not);
    - scale: those 13-18 s are the time from opening to dictating; a radiologist's
      whole time per radiograph (report, comparison, interruptions) is 2 to 2.5 min
      in stop-clock studies (Lehr et al., SPIE 1978, 100,000 patients) -- a median
      normal read of 75 s (mean 90 s) is taken here; only the ratio of waits to
      reading times and the wait cap depend on this scale;
    - ``sigma`` 0.6 (coefficient of variation 0.66): an assumption within the
      spread reported for radiograph reporting times (Cowan and Floyd, J Med Imaging
      Radiat Oncol 2023); fit a site's own with :func:`fit_lognormal` on its
      ``claimed -> completed`` durations (``--reading-times`` or the node database).
    """

    normal_median_s: float = 75.0
    abnormal_factor: float = 1.40
    sigma: float = 0.6

    def mean(self, abnormal: bool) -> float:
        """Mean reading time (s) of a normal or an abnormal study."""
        median = self.normal_median_s * (self.abnormal_factor if abnormal else 1.0)
        return median * math.exp(self.sigma**2 / 2)

    def draw(self, abnormal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reading times (s) for studies of these labels."""
        median = self.normal_median_s * np.where(abnormal, self.abnormal_factor, 1.0)
        return median * np.exp(self.sigma * rng.standard_normal(len(abnormal)))


def fit_lognormal(durations: Sequence[float]) -> tuple[float, float]:
    """Maximum-likelihood lognormal fit of reading durations.

    Parameters
    ----------
    durations : sequence of float
        Seconds; non-positive values are ignored.

    Returns
    -------
    median, sigma : float
        ``exp(mean(log T))`` and ``std(log T)``.

    Raises
    ------
    ValueError
        With fewer than two positive durations.
    """
    logs = np.log([d for d in durations if d > 0])
    if len(logs) < 2:
        raise ValueError("at least two positive durations are needed to fit reading times")
    return float(np.exp(logs.mean())), float(logs.std())


@dataclass(frozen=True)
class Stream:
    """One simulated day (or more): the same for every policy.

    Attributes
    ----------
    arrival : numpy.ndarray
        Seconds from the start, ascending.
    reading : numpy.ndarray
        Reading time of each study (s).
    cases : list of Case
        What each study is.
    measured : numpy.ndarray
        Boolean: studies counted in the figures (after the warm-up).
    picks : numpy.ndarray or None
        Index of each study in the pool it was drawn from (to give the same studies
        another model's scores).
    """

    arrival: np.ndarray
    reading: np.ndarray
    cases: list[Case]
    measured: np.ndarray
    picks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrival)


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a homogeneous Poisson process on ``[0, duration_s)``."""
    n = rng.poisson(rate_per_s * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, n))


def profile_arrivals(
    mean_rate_per_s: float,
    duration_s: float,
    rng: np.random.Generator,
    profile: Sequence[float] = DAILY_PROFILE,
) -> np.ndarray:
    """Arrival times of a Poisson process whose rate follows an hourly profile.

    Parameters
    ----------
    mean_rate_per_s : float
        The rate averaged over a day.
    duration_s : float
    rng : numpy.random.Generator
    profile : sequence of 24 float
        Relative rate per hour of the day (mean 1), repeated every day.

    Returns
    -------
    numpy.ndarray
        Sorted arrival times (thinning of a homogeneous process at the peak rate).
    """
    weights = np.asarray(profile, dtype=float)
    weights = weights / weights.mean()
    peak = mean_rate_per_s * weights.max()
    candidates = poisson_arrivals(peak, duration_s, rng)
    hour = (candidates // 3600).astype(int) % len(weights)
    keep = rng.uniform(size=len(candidates)) < weights[hour] / weights.max()
    return candidates[keep]


def make_stream(
    arrival: np.ndarray,
    pool: Sequence[Case],
    reading: ReadingTimes,
    rng: np.random.Generator,
    *,
    warmup_s: float = 0.0,
) -> Stream:
    """Draw a study (with replacement) from ``pool`` and a reading time for each arrival.

    Parameters
    ----------
    arrival : numpy.ndarray
    pool : sequence of Case
    reading : ReadingTimes
    rng : numpy.random.Generator
    warmup_s : float
        Studies arriving before this are simulated but not measured.

    Returns
    -------
    Stream
    """
    if not pool:
        raise ValueError("no cases to draw studies from")
    picks = rng.integers(0, len(pool), len(arrival))
    cases = [pool[i] for i in picks]
    abnormal = np.array([c.abnormal for c in cases], dtype=bool)
    return Stream(
        arrival=np.asarray(arrival, dtype=float),
        reading=reading.draw(abnormal, rng),
        cases=cases,
        measured=np.asarray(arrival) >= warmup_s,
        picks=picks,
    )


# Policies ----------------------------------------------------------------------------


@dataclass
class _Policy:
    """Order of the worklist: ``key(i, now)``, smallest read first.

    ``static`` keys never change while a study waits (a heap suffices); the node's
    keys change when a study passes the cap, so they are recomputed at each pick.
    """

    key: Callable[[int, float], tuple]
    static: bool


def _fifo(stream: Stream, **_kw: object) -> _Policy:
    arrival = stream.arrival
    return _Policy(lambda i, _now: (arrival[i], i), static=True)


def _score(stream: Stream, **_kw: object) -> _Policy:
    arrival = stream.arrival
    score = [-(c.probability if c.probability is not None else 0.0) for c in stream.cases]
    return _Policy(lambda i, _now: (score[i], arrival[i], i), static=True)


def _node(stream: Stream, *, wait_cap_s: float, high_confidence: float, **_kw: object) -> _Policy:
    levels = []
    for case in stream.cases:
        decision = priority_rules.compute_priority(
            status="triaged" if case.decision is not None else "not_evaluated",
            decision=case.decision,
            probability=case.probability,
            requested_priority=case.requested_priority,
            high_confidence=high_confidence,
        )
        levels.append(int(decision.priority))
    arrived = [_EPOCH + timedelta(seconds=float(t)) for t in stream.arrival]
    cap = timedelta(seconds=wait_cap_s)
    sort_key = priority_rules.worklist_sort_key

    clock: dict[float, datetime] = {}

    def key(i: int, now: float) -> tuple:
        when = clock.get(now)
        if when is None:
            clock.clear()
            when = clock[now] = _EPOCH + timedelta(seconds=now)
        return (*sort_key(levels[i], arrived[i], now=when, wait_cap=cap), i)

    return _Policy(key, static=False)


#: The policies, by name.
POLICIES: dict[str, Callable[..., _Policy]] = {"fifo": _fifo, "node": _node, "score": _score}


# The event loop ----------------------------------------------------------------------


@dataclass
class _Worklist:
    policy: _Policy
    heap: list[tuple] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)

    def add(self, i: int, now: float) -> None:
        if self.policy.static:
            heapq.heappush(self.heap, (*self.policy.key(i, now), i))
        else:
            self.waiting.append(i)

    def __bool__(self) -> bool:
        return bool(self.heap) or bool(self.waiting)

    def pop(self, now: float) -> int:
        if self.policy.static:
            return heapq.heappop(self.heap)[-1]
        key = self.policy.key
        best = min(range(len(self.waiting)), key=lambda k: key(self.waiting[k], now))
        self.waiting[best], self.waiting[-1] = self.waiting[-1], self.waiting[best]
        return self.waiting.pop()


def simulate(
    stream: Stream,
    policy: str,
    *,
    readers: int | Sequence[int],
    wait_cap_s: float = 3600.0,
    high_confidence: float = 0.9,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one policy on a stream.

    Parameters
    ----------
    stream : Stream
    policy : str
        A key of :data:`POLICIES`.
    readers : int or sequence of 24 int
        Radiologists reading in parallel, or a staffing schedule per hour of the day
        (a reader leaving at the hour finishes the read in progress first).
    wait_cap_s : float
        The node's wait cap (used by the ``node`` policy only).
    high_confidence : float
        The node's ``high_confidence`` (``node`` policy only).

    Returns
    -------
    claimed, completed : numpy.ndarray
        Seconds, per study of the stream.
    """
    schedule = [readers] * 24 if isinstance(readers, int) else [int(r) for r in readers]
    if len(schedule) != 24 or min(schedule) < 0 or max(schedule) < 1:
        raise ValueError("readers must be at least 1, or 24 hourly counts with one above 0")
    constant = len(set(schedule)) == 1
    rules = POLICIES[policy](stream, wait_cap_s=wait_cap_s, high_confidence=high_confidence)
    worklist = _Worklist(rules)
    n = len(stream)
    claimed = np.full(n, np.nan)
    completed = np.full(n, np.nan)
    busy: list[float] = []  # completion times of the reads in progress
    arrival, reading = stream.arrival, stream.reading
    i = 0
    now = 0.0
    while True:
        next_arrival = arrival[i] if i < n else math.inf
        next_done = busy[0] if busy else math.inf
        # A new hour may bring readers: an event when work is waiting.
        next_hour = math.inf if constant or not worklist else (math.floor(now / 3600) + 1) * 3600
        upcoming = min(next_arrival, next_done, next_hour)
        if upcoming == math.inf:
            break
        if next_arrival == upcoming:
            now = float(next_arrival)
            worklist.add(i, now)
            i += 1
        elif next_done == upcoming:
            now = heapq.heappop(busy)
        else:
            now = float(next_hour)
        capacity = schedule[int(now // 3600) % 24]
        while len(busy) < capacity and worklist:
            j = worklist.pop(now)
            claimed[j] = now
            completed[j] = now + reading[j]
            heapq.heappush(busy, float(completed[j]))
    return claimed, completed


def study_times(stream: Stream, claimed: np.ndarray, completed: np.ndarray) -> list[StudyTimes]:
    """The measured studies' timelines, for :mod:`worklist.turnaround`.

    Parameters
    ----------
    stream : Stream
    claimed, completed : numpy.ndarray
        From :func:`simulate`.

    Returns
    -------
    list of StudyTimes
    """
    return [
        StudyTimes(
            arrival=float(stream.arrival[k]),
            claimed=float(claimed[k]),
            completed=float(completed[k]),
            truth="abnormal" if stream.cases[k].abnormal else "normal",
        )
        for k in np.flatnonzero(stream.measured)
    ]


def erlang_c_wait(arrival_rate: float, mean_service: float, servers: int) -> float:
    """Mean wait in queue of an M/M/c FIFO queue (Erlang C).

    Parameters
    ----------
    arrival_rate : float
        Per second.
    mean_service : float
        Seconds.
    servers : int

    Returns
    -------
    float
        Seconds.

    Raises
    ------
    ValueError
        When the load is 1 or more.
    """
    a = arrival_rate * mean_service
    rho = a / servers
    if rho >= 1:
        raise ValueError("utilisation must be below 1")
    head = sum(a**k / math.factorial(k) for k in range(servers))
    tail = a**servers / math.factorial(servers) / (1 - rho)
    p_wait = tail / (head + tail)
    return p_wait * mean_service / (servers - a)
