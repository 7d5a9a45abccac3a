"""SLO mode: replicas for the token load expected one cold start ahead, at one replica's learned
capacity (``spec.autoscaling.slo``).

Units: *work* is load in seed replicas, ``prompt tok/s / seed prompt capacity + generated tok/s / seed
generation capacity`` (a mix counts linearly); the *capacity* (``capacity_scale``) is how much of that
one replica carries while the SLO holds, learned. Each evaluation:

1. **Demand**: the tokens served over the window, plus the requests waiting now (what was served hides
   what could not be), at the window's average cost per request (per request started or finished,
   whichever more did: while a cache thrashes few finish, and each would seem to cost many times its
   share).
2. **Misses**: the share of first tokens later than the TTFT bound, or that waited in the queue over
   3/4 of it. vLLM's TTFT buckets are coarse around common bounds (1 s, then 2.5 s); inside its bucket
   the tail is taken to fall off as it did across the bucket below (latencies crowd at a bucket's low
   end, which ``histogram_quantile``'s linear interpolation spreads evenly). Waiting in the queue is
   the load's doing at any load; a late first token without it counts only under load: at light load
   it is a long prompt's own prefill, and more replicas would not help. With a
   ``timePerOutputTokenSeconds``, a finished request whose output tokens came slower than that on
   average is a miss too, under load only (decoding slows as the batch grows; at light load it is the
   model's own speed). A request is counted once, at the worse of its two.
3. **Learning**: a minute's 1% is a handful of requests, as likely chance as overload, so a window is
   judged together with the others at about its load (within ~10%, fading over an hour): it failed
   when they, together, missed more than the SLO allows, or when its sure misses (after the next
   histogram bound, or queued) are beyond chance on their own. Two bounds fade over an hour: the most
   load a replica carried within the SLO (capacity is at least that) and the least it failed under
   (capacity is below that; the demand it was given, backlog included: an overloaded replica serves
   less than it is asked). The capacity aims between them, a little above the first; before any
   evidence, and never below it while nothing failed, at the share of the seed where a single queue in
   front of the prefill would keep the SLO for the window's mean prompt (``seed_share``). A loaded
   window whose busiest pod filled its KV cache past the target failed too, whatever its first tokens
   say: near a full cache vLLM preempts and recomputes, and the queue that follows grows faster than
   a loose bound shows in time (within it, the SLO holds up to the brink). When only the cache says
   so and the fleet's caches are filling too (on average past half the target: not one pod's few
   long requests), the loads counted as carried before were carried on the way to the brink (a cache
   fills over minutes): they are forgotten, and the capacity starts again where a fresh service does
   (the seed's share, or a ``replicaCapacity``), below the failure. When the first tokens fail too at
   such a brink, the failure teaches as any other, and the aim stays 10% under it. Evidence
   counts only on a settled fleet (the ready count unchanged for two windows: a backlog built on fewer
   replicas is counted after a scale-up) and outside a burst's tail (the minutes after a burst count
   its waits against the quiet that follows).
4. **Forecast**: the load's level and trend (Holt), one cold start ahead, when the rise is material
   (upward only: a falling load is the scale-down window's business). The cold start is measured from
   the service's own pods (creation to Ready) unless the SLO names it.
5. **Bursts**: a minute far above the median one is a burst, shorter than a cold start. Chasing it is
   too late (the load is gone before new replicas are ready, and back before the window lets them go),
   so for half an hour after one, the plan keeps the capacity of the largest.
6. **Sizing by prediction** (:mod:`qwen_operator.perf.sizing`): where the window's requests give a mix
   to predict for, the replicas are the fewest at which the performance model (a step model fitted to
   vLLM's engine counters, a queueing approximation, a load factor learned from the windows' queue
   times and first-token tails) predicts no more late first tokens than the SLO allows, for the load
   one cold start ahead: the larger of the forecast, the burst held, and the upper band of the rises
   the service's own last half hour showed over that horizon (``rise_band``). Slack teaches the model
   as misses do, so the plan sheds replicas on flat load without waiting for a failure. The capacity
   of steps 1-5 stays the answer where the model cannot say (no mix yet; no fleet size would meet the
   bound, as when the prompts' own prefill is longer than it; a load factor at the edge of its grid)
   and for a user's ``replicaCapacity`` (taken at its word); it is a floor under the model's answer in
   a window that failed the SLO at its load, and under a TPOT bound, which the model does not predict.

In the code: ``plan(seen, slo, seed, state, now)`` runs the stages in that order (``_demand``: step 1;
``_verdict``: steps 2-3 with the KV caches' brink; ``_learn``: the capacity; ``_outlook``: steps 4-5;
``_size``: step 6) and :mod:`.explain` words the result.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from qwen_operator import api
from qwen_operator.perf import sizing as sizer
from qwen_operator.scaling import explain
from qwen_operator.surge import Surge
from qwen_operator.traffic import Traffic

DEFAULT_COLD_START = 180.0  # seconds, until the service's own pods were seen starting
USER_SCALE = 1.0  # a capacity from qwen-operator tune is already at the SLO
SCALE_BOUNDS = (0.05, 1.5)  # a replica never carries much beyond its calibrated peak
MIN_FIRST_TOKENS = 20  # fewer first tokens in the window say nothing about a percentile
LOADED = 0.5  # utilisation (of the believed capacity) above which a miss is evidence...
PHYSICAL_FLOOR = 0.3  # ...if the replicas also run above this share of their calibrated peak
# A GPU calibration is peak throughput: the SLO holds at some part of it, from a queueing model of the
# prefill (seed_share), never below where misses count as load, never all of it.
SEED_SHARE_BOUNDS = (PHYSICAL_FLOOR, 0.9)
BACKLOG_SECONDS = 60.0  # waiting requests count as load to be served within this
RISE_FLOOR = 0.2  # a forecast rise smaller than this share of the level is noise
MEMORY_SECONDS = 3600.0  # how long capacity evidence lasts (it fades exponentially)
EXPLORE = 0.1  # with no failure seen, aim this much above the most carried
BETWEEN = 0.3  # between carried and failed, aim this far from carried
QUEUE_SHARE = 0.75  # of the TTFT bound: a request that waited longer has little left for its prefill
LEVEL_SECONDS = 60.0  # time constants of the level and trend
TREND_SECONDS = 300.0
PEAK_MEMORY = 1800.0  # seconds of per-minute peaks kept: how long a burst is held
MAX_PEAKS = 30
SETTLE_WINDOWS = 2  # traffic windows the ready count must hold before its latency teaches anything
STEADY = 0.5  # a load below this share of the last minutes' peak is the tail of a burst
BURST_RATIO = 2.5  # a burst: the highest minute at least this many times the median one
# A window's misses are judged together with the other windows at about its load: 1% of a minute's
# few hundred requests is a handful, as likely chance as overload.
POOL_RATIO = 1.05  # load bands, each this many times the one below...
POOL_LOW = 0.02  # ...from this load (seed replicas per replica)...
POOL_BANDS = 100  # ...to POOL_LOW x POOL_RATIO ** POOL_BANDS (about 2.6), the last band open
POOL_NEAR = 2  # bands on either side pooled with a window's own (about +-10% of its load)
CHANCE = 0.01  # a window alone fails when chance would give its misses less often than this
BRINK_MEAN = 0.5  # of the KV target: the fleet's mean usage above which one pod's full cache is a brink
CA2 = 1.5  # the arrivals' index of dispersion the model plans for (the Azure conversation trace's, at 1 s)
# The load planned for is the upper band of a forecast one cold start (plus an evaluation's slack)
# ahead: the rises of RISE_QUANTILE of the minutes remembered. Chosen on the training split only
# (``make bench-slo-train``): 0.5 left a quarter of the surges unmet, 0.95 ran steady traffic at about
# 1.5x the fleet.
RISE_QUANTILE = 0.75
EVALUATION_SLACK = 60.0
BRINK_MARGIN = 0.9  # after a brink the first tokens showed too, the aim stays at most this share of it


@dataclass(frozen=True)
class Capacity:
    """One replica's throughput in each kind of token, alone (the seed, or the user's)."""

    prompt_tokens_per_second: float
    generation_tokens_per_second: float

    def work(self, traffic: Traffic) -> float:
        return (
            traffic.prompt_tokens_per_second / self.prompt_tokens_per_second
            + traffic.generation_tokens_per_second / self.generation_tokens_per_second
        )


@dataclass(frozen=True)
class PlanState:
    capacity_scale: float | None = None  # None: not learned yet (the seed's)
    level: float | None = None
    trend: float = 0.0  # work per second
    updated: datetime | None = None
    peaks: tuple[tuple[datetime, float], ...] = ()  # per-minute maxima of the work
    cold_start_seconds: float | None = None  # measured
    carried: float | None = None  # the most load one replica carried within the SLO (decaying)
    failed: float | None = None  # the least load one replica failed under (decaying)
    # The ready count, and since when it changed (not persisted: a restart sees no change).
    fleet: int | None = None
    fleet_since: datetime | None = None
    # Requests and misses seen per load band, fading (not persisted: a restart judges windows alone).
    pool: tuple[tuple[int, float, float], ...] = ()
    sizing: sizer.Sizing | None = None  # the performance model (persisted: status' performanceModel)


@dataclass(frozen=True)
class Plan:
    need: float  # replicas
    work: float
    forecast: float
    hold: float
    attainment: float | None
    decode_attainment: float | None  # within the TPOT bound, with one and data
    pressure: bool  # this window failed the SLO at its load (evidence of too little capacity)
    scale: float
    cold_start: float
    state: PlanState
    message: str
    model: api.ModelReading | None = None  # what the performance model believes and predicts


def cold_start(
    slo: api.LatencySLO,
    state: PlanState,
    seen: Sequence[float],
    node_waits: Sequence[float] = (),
    waiting_for_node: int = 0,
) -> tuple[float, float | None]:
    """The cold start to plan for, and the measurement to keep (the mean of the latest ones seen).
    The measurement holds the node waits as often as they came; while pods wait for a node now, a
    replica asked for now waits too: the horizon is then the pods' own start (their measured start
    less their node waits) plus the slowest node wait seen lately (``node_waits``: those of the ready
    pods), if that is longer."""
    measured = state.cold_start_seconds
    fresh = [s for s in seen if math.isfinite(s) and 0 < s < 3 * 3600]
    if fresh:
        latest = sum(fresh) / len(fresh)
        measured = latest if measured is None else 0.5 * measured + 0.5 * latest
    if slo.cold_start_seconds is not None:
        return float(slo.cold_start_seconds), measured
    cold = measured if measured is not None else DEFAULT_COLD_START
    waits = [w for w in node_waits if math.isfinite(w) and 0 <= w < 3 * 3600]
    if waiting_for_node > 0 and waits and fresh:
        own = max(sum(fresh) / len(fresh) - sum(waits) / len(waits), 0.0)
        cold = max(cold, own + max(waits))
    return cold, measured


@dataclass(frozen=True)
class Evidence:
    """What one window's first tokens say about the SLO, as shares of them."""

    requests: float  # first tokens counted
    within: float  # within the bound (the tail inside its histogram bucket taken to fall off)
    beyond: float  # after the next histogram bound above it: surely late
    queued: float  # waited in the queue over QUEUE_SHARE of the bound
    # With a TPOT bound and enough finished requests: the share of them within it (None: not judged),
    # and the share beyond the next histogram bound above it (surely slow).
    decode: float | None = None
    decode_beyond: float = 0.0

    @staticmethod
    def of(traffic: Traffic, bound: float, tpot_bound: float | None = None) -> Evidence | None:
        ttft, queue, tpot = traffic.ttft, traffic.queue_time, traffic.tpot
        within, by_bucket = ttft.share_within_tail(bound), ttft.share_by_bucket(bound)
        if ttft.count < MIN_FIRST_TOKENS or within is None or by_bucket is None:
            return None
        waited = queue.share_within(QUEUE_SHARE * bound) if queue.count else None
        decode, decode_beyond = None, 0.0
        if tpot_bound is not None and tpot.count >= MIN_FIRST_TOKENS:
            decode, by = tpot.share_within_tail(tpot_bound), tpot.share_by_bucket(tpot_bound)
            decode_beyond = 0.0 if by is None else 1 - by
        queued = 0.0 if waited is None else 1 - waited
        return Evidence(ttft.count, within, 1 - by_bucket, queued, decode, decode_beyond)

    @property
    def slow(self) -> float:
        """The share of finished requests slower than the TPOT bound (0 when not judged)."""
        return 0.0 if self.decode is None else 1 - self.decode

    def misses(self, loaded: bool) -> tuple[float, float]:
        """The shares that missed for want of capacity, likely and surely: waiting in the queue is the
        load's doing at any load; a late first token or slow output only under load (at light load it
        is the prompt's own prefill, or the model's own decoding speed, and more replicas would not
        help). Each request is counted once, at the worse of the two bounds: the larger share."""
        if not loaded:
            return self.queued, self.queued
        return max(self.queued, 1 - self.within, self.slow), max(self.queued, self.beyond, self.decode_beyond)


def _by_chance(misses: float, requests: float, share: float) -> float:
    """How likely at least ``misses`` of ``requests`` would miss if each missed with ``share``: the
    Poisson tail (misses are rare), or its normal approximation for a large service's minute."""
    mean, k = requests * share, math.ceil(misses - 1e-9)
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    if mean > 100:
        return 0.5 * math.erfc((k - 0.5 - mean) / math.sqrt(2 * mean))
    if k > mean + 12 * math.sqrt(mean) + 12:
        return 0.0  # far beyond: the terms below would underflow to nothing
    term = below = math.exp(-mean)  # P(X = 0)
    for i in range(1, k):
        term *= mean / i
        below += term
    return max(1.0 - below, 0.0)


def _band(load: float) -> int:
    if load <= POOL_LOW:
        return 0
    return min(int(math.log(load / POOL_LOW) / math.log(POOL_RATIO)), POOL_BANDS)


def _judge(
    state: PlanState, evidence: Evidence, load: float, loaded: bool, allowance: float, new: float, fade: float
) -> tuple[bool, float, tuple[tuple[int, float, float], ...]]:
    """Whether one replica at ``load`` failed the SLO, the share that missed over the windows at about
    that load, and the pool with this window added (``new``: the share of the window not counted
    before; the pool fades with ``fade``).

    A minute's 1% is a handful of requests, as likely chance as overload: the window's likely misses
    are judged together with the other windows' at about its load (the pool), unless its sure misses
    alone are beyond chance."""
    likely, sure = evidence.misses(loaded)
    band = _band(load)
    bands = {b: (n * fade, k * fade) for b, n, k in state.pool}
    n, k = bands.get(band, (0.0, 0.0))
    bands[band] = (n + new * evidence.requests, k + new * likely * evidence.requests)
    pool = tuple((b, n, k) for b, (n, k) in sorted(bands.items()) if n >= 1.0)
    near = [(n, k) for b, n, k in pool if abs(b - band) <= POOL_NEAR]
    total = sum(n for n, _ in near)
    share = sum(k for _, k in near) / total if total > 0 else likely
    beyond_chance = _by_chance(sure * evidence.requests, evidence.requests, allowance) < CHANCE
    return share > allowance or beyond_chance, share, pool


def _learn(
    state: PlanState,
    initial: float,
    load: float,
    demand: float,
    failed_now: bool | None,
    fade: float,
    brink: Literal["forget", "margin"] | None = None,
) -> tuple[float, float | None, float | None]:
    """One replica's capacity at the SLO, from two bounds that fade over MEMORY_SECONDS: the most load
    a replica carried within the SLO (the capacity is at least that), and the least it failed under
    (the capacity is below that). Between them, the plan aims a little above the first; with no
    failure seen, somewhat above what was carried, to find out (capped at the calibrated peak x 1.5).
    ``demand``: the load given, backlog included (at least ``load``, the part served): where a failure
    counts; ``failed_now``: this window's verdict, None when it teaches nothing;
    ``brink``: the fleet's KV caches are at the brink at ``load``: "forget" what was carried before
    (the capacity starts again where a fresh service starts, below the failure), or keep a "margin"
    (what was carried is held low enough that the aim stays at most BRINK_MARGIN of the failure)."""
    carried = None if state.carried is None or brink == "forget" else state.carried * fade
    if carried is not None and brink == "margin":
        carried = min(carried, load * (BRINK_MARGIN - BETWEEN) / (1 - BETWEEN))
    failed = None if state.failed is None else state.failed / fade
    if failed_now is True:
        failed = demand if failed is None else min(failed, demand)
    elif failed_now is False:
        carried = load if carried is None else max(carried, load)
    believed = state.capacity_scale if state.capacity_scale is not None else initial
    if carried is None:
        # Nothing carried within the SLO yet: below the least load a replica failed under, if any.
        scale = believed if failed is None else min(initial, failed * 0.9)
    elif failed is None or failed > SCALE_BOUNDS[1]:
        scale = max(initial, carried * (1 + EXPLORE))
    elif failed > carried:
        scale = carried + BETWEEN * (failed - carried)
    else:
        scale = failed * 0.9  # contradicting evidence: the failure is the later word
    return min(max(scale, SCALE_BOUNDS[0]), SCALE_BOUNDS[1]), carried, failed


def seed_share(bound: float, prefill: float, allowance: float) -> float:
    """The share of its peak a replica can run at while at most ``allowance`` of first tokens wait
    longer than ``bound`` leaves after their own ``prefill`` (the mean prompt's, in seconds): a single
    queue with exponential service (M/M/1), P(wait > t) = rho * exp(-(1 - rho) * t / prefill)."""
    if prefill <= 0:
        return SEED_SHARE_BOUNDS[1]
    room = (bound - prefill) / prefill
    if room <= 0:
        return SEED_SHARE_BOUNDS[0]
    lo, hi = 0.0, 1.0
    for _ in range(40):
        rho = (lo + hi) / 2
        if rho * math.exp(-(1 - rho) * room) > allowance:
            hi = rho
        else:
            lo = rho
    return min(max(lo, SEED_SHARE_BOUNDS[0]), SEED_SHARE_BOUNDS[1])


def _loaded(per_replica: float, scale: float) -> bool:
    """Whether a miss at this load is the load's doing. Judged on the physical load too, not only on
    the believed capacity: else each lowering of the belief would make the next miss look loaded."""
    return per_replica > PHYSICAL_FLOOR and per_replica > LOADED * scale


def _smooth(state: PlanState, work: float, now: datetime) -> tuple[float, float]:
    if state.level is None or state.updated is None:
        return work, 0.0
    dt = (now - state.updated).total_seconds()
    if dt <= 0:
        return state.level, state.trend
    a = 1 - math.exp(-dt / LEVEL_SECONDS)
    b = 1 - math.exp(-dt / TREND_SECONDS)
    level = state.level + state.trend * dt
    level += a * (work - level)
    slope = (level - state.level) / dt
    trend = state.trend + b * (slope - state.trend)
    return max(level, 0.0), trend


def _peaks(state: PlanState, work: float, now: datetime) -> tuple[tuple[datetime, float], ...]:
    """Per-minute maxima of the work over the last PEAK_MEMORY seconds."""
    minute = now.replace(second=0, microsecond=0)
    kept = [(t, w) for t, w in state.peaks if (now - t).total_seconds() <= PEAK_MEMORY]
    if kept and kept[-1][0] == minute:
        kept[-1] = (minute, max(kept[-1][1], work))
    else:
        kept.append((minute, work))
    return tuple(kept[-MAX_PEAKS:])


def rise_band(peaks: Sequence[tuple[datetime, float]], horizon: float) -> float:
    """The upper band of the load one ``horizon`` ahead, as a ratio to now's: of the minutes
    remembered, the RISE_QUANTILE of how far the load rose within ``horizon`` after each (the error
    of a persistence forecast at that horizon, measured on the service's own history); 1 without five
    minutes of history, never below 1."""
    minutes = max(1, math.ceil(horizon / 60))
    works = [w for _, w in peaks]
    ratios = sorted(
        max(works[i + 1 : i + 1 + minutes]) / works[i] for i in range(len(works) - 1) if works[i] > 0
    )
    if len(ratios) < 5:
        return 1.0
    return max(1.0, ratios[min(len(ratios) - 1, int(RISE_QUANTILE * len(ratios)))])


def burst_hold(peaks: Sequence[tuple[datetime, float]]) -> float:
    """The work of the largest burst within the memory: a minute at least BURST_RATIO times the median
    one. Bursts are shorter than a cold start and come back before the scale-down window would let
    their replicas go, so the plan keeps their capacity rather than chase the next. 0 without one."""
    if len(peaks) < 3:
        return 0.0
    works = sorted(w for _, w in peaks)
    top, median = works[-1], works[len(works) // 2]
    return top if top > 0 and top >= BURST_RATIO * median else 0.0


def _size(
    state: PlanState,
    seen: Seen,
    traffic: Traffic,
    capacity: Capacity,
    slo: tuple[float, float],
    settled: bool,
    ahead: float,
    new: float,
) -> tuple[sizer.Sizing, sizer.Sized | None]:
    """The performance model after this window, and the fewest replicas it predicts keep the SLO at
    the load planned for (``ahead`` times today's) with the fullest KV cache under its target, and the
    share of first tokens it predicts late there; None without a mix to predict for, or when no fleet
    would (own prefills longer than the bound: the capacity learned from the windows decides then)."""
    allowance, bound = slo
    ready, kv = seen.ready, seen.kv
    sizing = state.sizing or sizer.Sizing.start(
        sizer.prior(capacity.prompt_tokens_per_second, capacity.generation_tokens_per_second)
    )
    mix = sizer.mix_of(traffic, CA2)
    if mix is None:
        return sizing, None
    if settled:
        sizing = sizer.observe(sizing, traffic, mix, ready, seen.running, bound, new)
    planned = mix.at(mix.rate * max(ahead, 1.0))
    cache = sizer.Cache(max(kv), ready, mix.rate, seen.kv_target) if kv else None
    return sizing, sizer.fewest(sizing, planned, allowance, bound, 1, max(4 * ready, 64), cache=cache)


@dataclass(frozen=True)
class Seen:
    """What the service showed this evaluation: its traffic over the source's window, its ready pods
    and what they hold now, its pods' start times, and the router's surge. ``kv``: the ready pods'
    KV-cache usage (0-1), those that report it; ``kv_target``: the usage a replica should stay under;
    ``surge``: arrivals the router counted above the window's rate (the load planned for is then at
    least the router's rate; nothing is learned from it)."""

    traffic: Traffic | None
    ready: int
    running: float = 0.0  # requests in their batches now, summed over the ready pods
    waiting: float = 0.0  # requests waiting for room, summed
    kv: Sequence[float] = ()
    kv_target: float = 1.0
    cold_starts: Sequence[float] = ()  # seconds from creation to Ready of the service's recent pods
    node_waits: Sequence[float] = ()  # of those, seconds waiting for a node
    waiting_for_node: int = 0  # pods unschedulable now
    surge: Surge | None = None


@dataclass(frozen=True)
class Demand:
    """Step 1: the load, in seed replicas' worth of tokens."""

    served: float  # what the window's tokens came to
    work: float  # with the requests waiting now, to be served within BACKLOG_SECONDS


@dataclass(frozen=True)
class Verdict:
    """Steps 2-3: what this window says about one replica's capacity at the SLO."""

    evidence: Evidence | None
    load: float  # seed replicas' worth served on each ready replica
    loaded: bool  # a miss at this load is the load's doing
    settled: bool  # the fleet held long enough for its latency to teach
    failed: bool | None  # this window failed the SLO at its load (None: it teaches nothing)
    pooled: float | None  # the share that missed over the windows at about this load
    pool: tuple[tuple[int, float, float], ...]
    fleet_since: datetime | None
    kv_peak: float  # the busiest pod's KV-cache usage, and the fleet's mean
    kv_mean: float
    kv_full: bool  # failed only for a cache past the target
    brink: Literal["forget", "margin"] | None


@dataclass(frozen=True)
class Outlook:
    """Steps 4-5: the load to plan for, one cold start ahead."""

    cold: float  # the cold start planned for
    measured: float | None  # the measured one, kept
    level: float
    trend: float
    forecast: float
    hold: float  # a burst's work held
    planned: float  # the larger of those and the rises the last half hour showed over the horizon


def plan(seen: Seen, slo: api.LatencySLO, seed: Capacity, state: PlanState, now: datetime) -> Plan | None:
    """The replicas the SLO needs, or None without traffic data (the targets then decide)."""
    traffic, ready = seen.traffic, seen.ready
    if traffic is None or not traffic.usable() or ready <= 0:
        return None
    user = slo.replica_capacity
    capacity = (
        Capacity(user.prompt_tokens_per_second, user.generation_tokens_per_second)
        if user is not None
        else seed
    )
    allowance, bound = slo.allowance, slo.time_to_first_token_seconds
    initial = USER_SCALE if user is not None else _initial_share(traffic, capacity, bound, allowance)
    demand = _demand(traffic, seen.waiting, capacity)
    peaks = _peaks(state, demand.work, now)
    elapsed = 0.0 if state.updated is None else max((now - state.updated).total_seconds(), 0.0)
    new = 1.0 if state.updated is None else min(elapsed / traffic.seconds, 1.0)  # windows overlap
    fade = math.exp(-elapsed / MEMORY_SECONDS)
    verdict = _verdict(seen, slo, state, demand, peaks, initial, now, new, fade)
    scale, carried, failed = _learn(
        state, initial, verdict.load, demand.work / ready, verdict.failed, fade, verdict.brink
    )
    outlook = _outlook(seen, slo, state, demand, peaks, now)
    # Step 6: the performance model sizes the fleet where it can predict for this mix, for the load
    # expected one cold start ahead, the requests waiting now included.
    ahead = outlook.planned / demand.served if demand.served > 0 else 1.0  # the backlog and the forecast
    sizing, sized = _size(state, seen, traffic, capacity, (allowance, bound), verdict.settled, ahead, new)
    need = max(outlook.forecast, outlook.hold) / scale
    # The model decides only while it explains what it sees: a window that failed the SLO at its load
    # keeps the capacity's answer as a floor, and a load factor at the edge of its range means the
    # model is off by more than it can correct (a card far from its table, a workload it does not fit).
    # A user's capacity (from qwen-operator tune) is taken at its word; the TPOT bound, which the model
    # does not predict, keeps the capacity learned from the windows' decode misses as a floor.
    acted = sized if user is None and sizing.explains() else None
    if acted is not None:
        floor = slo.time_per_output_token_seconds is not None or bool(verdict.failed)
        need = max(need, acted.replicas) if floor else float(acted.replicas)
    new_state = PlanState(
        capacity_scale=scale,
        level=outlook.level,
        trend=outlook.trend,
        updated=now,
        peaks=peaks,
        cold_start_seconds=outlook.measured,
        carried=carried,
        failed=failed,
        fleet=ready,
        fleet_since=verdict.fleet_since,
        pool=verdict.pool,
        sizing=sizing,
    )
    message = explain.describe(
        seen, slo, demand.work, scale, verdict, outlook, acted, sizing.correction, BRINK_MARGIN
    )
    evidence = verdict.evidence
    return Plan(
        need,
        demand.work,
        outlook.forecast,
        outlook.hold,
        None if evidence is None else evidence.within,
        None if evidence is None else evidence.decode,
        bool(verdict.failed),
        scale,
        outlook.cold,
        new_state,
        message,
        _reading(sizing, sized),
    )


def _initial_share(traffic: Traffic, capacity: Capacity, bound: float, allowance: float) -> float:
    """Where the capacity starts without a user's: the share of the seed a single queue in front of the
    prefill allows for the mean prompt (per finished request, or per first token while none finished);
    unknown, the most cautious share."""
    prefills = traffic.requests or traffic.ttft.count
    prefill = traffic.prompt_tokens / prefills / capacity.prompt_tokens_per_second if prefills > 0 else 0.0
    return seed_share(bound, prefill, allowance) if prefill > 0 else SEED_SHARE_BOUNDS[0]


def _demand(traffic: Traffic, waiting: float, capacity: Capacity) -> Demand:
    """Step 1. What was served hides what could not be: the requests waiting now are demand too, to be
    served within BACKLOG_SECONDS (each costs what the window's requests cost on average: per request
    started or finished, whichever more did, as few finish while a cache thrashes)."""
    served = capacity.work(traffic)
    rate = max(traffic.requests_per_second, traffic.ttft.count / traffic.seconds)
    per_request = served / rate if rate > 0 else 0.0
    return Demand(served, served + max(waiting, 0.0) * per_request / BACKLOG_SECONDS)


def _verdict(
    seen: Seen,
    slo: api.LatencySLO,
    state: PlanState,
    demand: Demand,
    peaks: tuple[tuple[datetime, float], ...],
    initial: float,
    now: datetime,
    new: float,
    fade: float,
) -> Verdict:
    """Steps 2-3: whether this window failed the SLO at its load, judged with the windows at about
    that load, and what the KV caches add."""
    traffic = seen.traffic
    assert traffic is not None  # plan() returns before without one
    bound = slo.time_to_first_token_seconds
    evidence = Evidence.of(traffic, bound, slo.time_per_output_token_seconds)
    # Evidence is judged on the fleet that served it, at the load it served. First tokens and queue
    # waits are counted when they end: a backlog built on fewer replicas shows after a scale-up, spread
    # over more; and the minutes after a burst still count its waits against the quiet that follows.
    # (None: no change seen since the first evaluation, or a restart.)
    fleet_since = state.fleet_since if state.fleet in (None, seen.ready) else now
    # (Peaks are kept per minute: this one's may have started longer ago than a short window.)
    recent = [w for t, w in peaks if (now - t).total_seconds() <= (SETTLE_WINDOWS + 1) * traffic.seconds]
    settled = (
        fleet_since is None or (now - fleet_since).total_seconds() >= SETTLE_WINDOWS * traffic.seconds
    ) and demand.work >= STEADY * max(recent, default=demand.work)
    load = demand.served / seen.ready  # seed replicas' worth on each ready replica: its physical load
    believed = state.capacity_scale if state.capacity_scale is not None else initial
    loaded = _loaded(load, believed)
    failed_now, pooled, pool = None, None, state.pool
    if evidence is not None and settled and demand.served > 0:
        failed_now, pooled, pool = _judge(state, evidence, load, loaded, slo.allowance, new, fade)
    # Near a full KV cache vLLM preempts and recomputes: throughput falls and the queue grows faster
    # than a loose bound shows in time. A loaded replica that fills its cache past the target while its
    # first tokens still meet the SLO failed; if the fleet's caches are filling too (not one pod's few
    # long requests), it is at the brink, and the loads counted as carried before were carried on the
    # way there (a cache fills over minutes).
    # When the first tokens fail too, the failure teaches as usual, but the aim stays at most
    # BRINK_MARGIN of the brink (between carried and failed, it could sit a hair below it).
    kv = seen.kv
    kv_peak, kv_mean = max(kv, default=0.0), sum(kv) / len(kv) if kv else 0.0
    over = failed_now is not None and loaded and kv_peak > seen.kv_target
    kv_full = over and failed_now is False
    brink: Literal["forget", "margin"] | None = None
    if over and kv_mean > BRINK_MEAN * seen.kv_target:
        brink = "forget" if kv_full else "margin"
    if kv_full:
        failed_now = True
    return Verdict(
        evidence,
        load,
        loaded,
        settled,
        failed_now,
        pooled,
        pool,
        fleet_since,
        kv_peak,
        kv_mean,
        kv_full,
        brink,
    )


def _outlook(
    seen: Seen,
    slo: api.LatencySLO,
    state: PlanState,
    demand: Demand,
    peaks: tuple[tuple[datetime, float], ...],
    now: datetime,
) -> Outlook:
    """Steps 4-5: the forecast one cold start ahead, the burst held, and the load planned for."""
    work = demand.work
    cold, measured = cold_start(slo, state, seen.cold_starts, seen.node_waits, seen.waiting_for_node)
    level, trend = _smooth(state, work, now)
    rise = max(trend, 0.0) * cold
    # A rise smaller than RISE_FLOOR of the level is noise; a larger one is planned for (at most 2x).
    forecast = max(work, min(level + rise, 2 * work + 1)) if rise > RISE_FLOOR * level else work
    if seen.surge is not None:
        forecast = max(forecast, work * seen.surge.factor)
    hold = burst_hold(peaks)
    planned = max(forecast, hold, work * rise_band(peaks, cold + EVALUATION_SLACK))
    return Outlook(cold, measured, level, trend, forecast, hold, planned)


def _reading(sizing: sizer.Sizing, sized: sizer.Sized | None) -> api.ModelReading:
    """What the status shows of the model: its fit, how sure it is, its load factor, its prediction."""
    fit = sizing.fit
    model = fit.model
    return api.ModelReading(
        prefill_tokens_per_second=round(model.prefill_tok_s),
        step_floor_seconds=round(model.floor_s, 4),
        fit_windows=fit.windows,
        fit_spread_percent=round(100 * max(fit.spread()), 1),
        load_factor=round(sizing.correction, 2),
        replicas=None if sized is None else sized.replicas,
        late_percent=None if sized is None else round(100 * sized.late, 2),
    )
