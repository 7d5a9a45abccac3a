"""The scaling decision: a pure function of what was observed, the spec, the state and the time.

``decide(observation, spec, state, now, seed) -> Decision`` runs small named stages; each may change
the replica count and says why (:class:`Reason`). ``spec`` is the autoscaling block resolved against
the rest of the QwenService (``QwenServiceSpec.scaling()``: the GPU's concurrency target filled in),
``seed`` the GPU's peak token rates (``QwenServiceSpec.seed_capacity()``), where SLO mode's model
starts:

1. ``recommend``: per signal (concurrency, KV-cache usage with the waiting requests' share, optionally
   waiting requests) the replicas the load needs; the largest wins; a tolerance band around the
   current count moves nothing. In SLO mode (``spec.autoscaling.slo``) the plan's need is the first
   signal, in the concurrency's place, while the pods report traffic: the fewest replicas the
   performance model (:mod:`qwen_operator.perf`) predicts keep the SLO at the load expected one cold
   start ahead, with the capacity learned from the windows (:mod:`.slo`) where the model cannot say.
   The plan is made first (``_slo_plan``), as it also carries the state SLO mode learns.
2. cold start: the count compared with is the Deployment's (ready pods plus pods starting), so pods on
   the way count as capacity; only load beyond them scales up again.
3. ``scale_up``: immediate, at most +``maxStepPercent`` % or +``maxStepReplicas`` per step; load far
   above the ready pods' capacity (``panicThreshold``) skips the limit.
4. ``scale_down``: only after a full window of unbroken data, not within the cooldown after a scale-up,
   to the highest recommendation of the stabilization window, at most ``maxStepReplicas`` per step.
5. ``bound``: minReplicas/maxReplicas, or those of the schedule's window that holds now (``limits``).
6. No usable data (none, NaN, Inf, stale, or the source failed): hold, say ``MetricsUnavailable``.

No I/O and no clock: ``now`` is passed in, the state comes in and goes out. See docs/autoscaling.md.

Over 300 lines because the stages belong together: each is small, and reading them in order is reading
the decision.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from qwen_operator import api, idle, surge
from qwen_operator.gpu_targets import DEFAULT_CAPACITY
from qwen_operator.scaling.slo import Capacity, Plan, Seen, plan
from qwen_operator.scaling.state import State
from qwen_operator.traffic import Traffic, combine


class Reason(enum.StrEnum):
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    AT_TARGET = "AtTarget"  # the load needs the current replicas, within the tolerance
    COLD_START = "ColdStart"  # the load is covered once the starting pods are ready
    ABOVE_TARGET = "AboveTarget"
    BELOW_TARGET = "BelowTarget"
    PANIC = "Panic"
    SCALE_UP_LIMITED = "ScaleUpLimited"
    AWAITING_FULL_WINDOW = "AwaitingFullWindow"
    SCALE_DOWN_COOLDOWN = "ScaleDownCooldown"
    SCALE_DOWN_STABILIZED = "ScaleDownStabilized"
    SCALE_DOWN_LIMITED = "ScaleDownLimited"
    TOO_FEW_REPLICAS = "TooFewReplicas"
    TOO_MANY_REPLICAS = "TooManyReplicas"
    SCALED_TO_ZERO = "ScaledToZero"  # minReplicas 0 with the router: idle long enough, or still idle
    AWAITING_IDLE = "AwaitingIdle"  # the load asks for zero; the idle rule keeps one replica for now
    WAKE = "Wake"  # at zero, a request came (or the router cannot be read)


# Reasons that mean "the signals asked for another count, a limit said no" (the ScalingLimited condition).
LIMITED = frozenset(
    {Reason.SCALE_UP_LIMITED, Reason.SCALE_DOWN_LIMITED, Reason.TOO_FEW_REPLICAS, Reason.TOO_MANY_REPLICAS}
)


# ----------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PodSample:
    """One pod's latest vLLM figures, summed over its engines (KV usage: their mean)."""

    running: float
    waiting: float
    kv_cache_usage: float | None  # 0-1; None when the pod exports neither KV metric
    age_seconds: float  # how old the newest sample is
    traffic: Traffic | None = None  # what it served over the source's recent window, when known

    def usable(self, stale_after: float) -> bool:
        numbers = (self.running, self.waiting, self.age_seconds)
        if not all(math.isfinite(x) and x >= 0 for x in numbers):
            return False
        if self.kv_cache_usage is not None and not (
            math.isfinite(self.kv_cache_usage) and 0 <= self.kv_cache_usage <= 1.5
        ):
            return False
        return self.age_seconds <= stale_after


@dataclass(frozen=True)
class Observation:
    """One QwenService as seen now: the Deployment's replicas, its ready pods, and their samples."""

    replicas: int  # the Deployment's spec.replicas: what was asked for, ready or not
    ready_pods: tuple[str, ...]
    samples: Mapping[str, PodSample] = field(default_factory=dict)
    cold_starts: tuple[float, ...] = ()  # seconds from creation to Ready of the service's recent pods
    node_waits: tuple[float, ...] = ()  # of those, seconds waiting for a node (created to scheduled)
    waiting_for_node: int = 0  # the service's pods unschedulable now (waiting for a node)
    error: str | None = None  # the metrics source failed (unreachable, timeout, bad answer)
    router: idle.RouterSample | None = None  # the router's figures (None: no router in front)


# ---------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Signal:
    name: str  # concurrency (or slo, the plan in its place), kvCacheUsage, waiting
    value: float  # the total over the pods
    target: float  # per replica
    detail: str = ""  # what the value is made of, where it is not plain

    @property
    def need(self) -> float:
        """Replicas this signal needs."""
        return self.value / self.target


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: Reason
    message: str
    state: State
    recommendation: int | None = None
    observation: api.ScalingObservation | None = None
    ready_replicas: int = 0  # ready pods counted (Observation.ready_pods names them)

    @property
    def metrics_available(self) -> bool:
        return self.observation is not None

    @property
    def limited(self) -> bool:
        return self.reason in LIMITED


# --------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class LoadRecommendation:
    """The recommendation before limits, with what it rests on."""

    replicas: int
    reason: Reason
    message: str
    top: Signal
    observation: api.ScalingObservation


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def signals(
    samples: Mapping[str, PodSample], targets: api.ScalingTargets, load: Signal, slo: Plan | None = None
) -> list[Signal]:
    """Each signal's total over the pods and the replicas it needs at its per-replica target: the load
    (``load``: :func:`concurrency`), or in SLO mode the plan's need in its place; the KV-cache usage
    (a cap in either mode); the waiting requests, when targeted."""
    out = [load if slo is None else Signal("slo", slo.need, 1.0)]
    if kv := kv_usages(samples):
        used, waiting = sum(kv), kv_waiting(samples.values(), targets.kv_cache_usage)
        detail = f" ({_fmt(used)} used + {_fmt(waiting)} for requests waiting for room)" if waiting else ""
        out.append(Signal("kvCacheUsage", used + waiting, targets.kv_cache_usage, detail))
    if targets.waiting_per_replica is not None:
        out.append(Signal("waiting", sum(s.waiting for s in samples.values()), targets.waiting_per_replica))
    return out


def concurrency(
    samples: Mapping[str, PodSample], targets: api.ScalingTargets, router: idle.RouterSample | None
) -> Signal:
    """The requests at the pods and waiting there, or as the router counts them now when it counts
    more (the same count, seconds fresh, not a scrape late)."""
    value = sum(s.running + s.waiting for s in samples.values())
    routed = _routed(router)
    if routed is not None and routed > value:
        return Signal("concurrency", routed, targets.concurrency(), " (as the router counts it now)")
    return Signal("concurrency", value, targets.concurrency())


def kv_waiting(samples: Iterable[PodSample], target: float) -> float:
    """The KV cache the waiting requests would add if admitted: on a pod that cannot take one more
    request of its running ones' mean size and stay under ``target``, each waiting request at that mean
    (with chunked prefill vLLM admits a long prompt a chunk at a time and preempts when the running ones
    grow, so a full cache shows as a queue, not as usage). Where the cache has room, requests wait for
    something else (the batch limits), and the other signals see them."""
    total = 0.0
    for s in samples:
        used = s.kv_cache_usage or 0.0
        each = used / s.running if s.running >= 1 else 0.0  # running: a count (fractions: averaged)
        if used + each > target:
            total += s.waiting * each
    return total


def _routed(router: idle.RouterSample | None) -> float | None:
    """The requests at the pods and held for one, as the router counts them (None: no reading)."""
    if router is None or router.error is not None or router.routers <= 0:
        return None
    value = router.in_flight + router.waiting
    return value if math.isfinite(value) and value >= 0 else None


def _replicas_for(need: float, current: int, tolerance: float) -> int:
    """Replicas for a need; within the tolerance band around ``current`` it is ``current``."""
    if current > 0 and abs(need / current - 1) <= tolerance:
        return current
    return max(math.ceil(need - 1e-9), 0)


def _describe(sig: Signal, ready: int) -> str:
    label = {"concurrency": "concurrency", "kvCacheUsage": "KV-cache usage", "waiting": "waiting"}[sig.name]
    return f"{label} {_fmt(sig.value)}{sig.detail} vs target {_fmt(sig.target)} x {ready} ready"


def usable_samples(obs: Observation, spec: api.AutoscalingSpec) -> dict[str, PodSample]:
    """The ready pods' samples that are fresh and sane."""
    stale = spec.metrics.stale_after_seconds
    return {pod: s for pod, s in obs.samples.items() if pod in obs.ready_pods and s.usable(stale)}


def kv_usages(usable: Mapping[str, PodSample]) -> tuple[float, ...]:
    """The KV-cache usage of the pods that export it."""
    return tuple(s.kv_cache_usage for s in usable.values() if s.kv_cache_usage is not None)


def recommend(
    obs: Observation,
    spec: api.AutoscalingSpec,
    usable: Mapping[str, PodSample],
    traffic: Traffic | None = None,
    slo: Plan | None = None,
) -> LoadRecommendation | None:
    """Stages 1-2: what the load needs, or None without usable data (``usable``: :func:`usable_samples`;
    ``traffic``: theirs, combined).

    Ready pods without data are assumed idle when that would scale up, and exactly at target when that
    would scale down (as the Kubernetes HPA does), so a pod that stopped reporting never causes a move.
    """
    if not usable:
        return None
    silent = sorted(pod for pod in obs.ready_pods if pod not in usable)
    missing = len(silent)
    current = obs.replicas
    load = concurrency(usable, spec.targets, obs.router)
    sigs = signals(usable, spec.targets, load, slo)
    conc = load.value
    top = max(sigs, key=lambda s: s.need)
    up = max(_replicas_for(s.need, current, spec.tolerance) for s in sigs)
    down = max(_replicas_for(s.need + missing, current, spec.tolerance) for s in sigs)
    replicas = up if up > current else min(down, current)

    kv_values = kv_usages(usable)
    observation = api.ScalingObservation(
        ready_replicas=len(obs.ready_pods),
        pods_with_data=len(usable),
        concurrency=round(conc, 2),
        waiting=round(sum(s.waiting for s in usable.values()), 2),
        load_per_replica=round(conc / len(usable), 2),
        kv_cache_usage=round(sum(kv_values) / len(kv_values), 3) if kv_values else None,
        prompt_tokens_per_second=None if traffic is None else round(traffic.prompt_tokens_per_second, 1),
        generation_tokens_per_second=None
        if traffic is None
        else round(traffic.generation_tokens_per_second, 1),
        ttft_within_slo_percent=None
        if slo is None or slo.attainment is None
        else round(100 * slo.attainment, 2),
        tpot_within_slo_percent=None
        if slo is None or slo.decode_attainment is None
        else round(100 * slo.decode_attainment, 2),
        model=None if slo is None else slo.model,
    )
    ready = len(obs.ready_pods)
    text = slo.message if slo is not None and top.name == "slo" else _describe(top, ready)
    if missing:
        text += f"; {missing} ready pod(s) without data: {', '.join(silent[:5])}"
    if replicas > current:
        reason = Reason.ABOVE_TARGET
    elif replicas < current:
        reason = Reason.BELOW_TARGET
    elif ready < current and math.ceil(top.need - 1e-9) > ready:
        reason = Reason.COLD_START
        text += f"; {current - ready} starting replica(s) will absorb it"
    else:
        reason = Reason.AT_TARGET
    return LoadRecommendation(replicas, reason, text, top, observation)


def scale_up(
    need: LoadRecommendation, current: int, ready: int, policy: api.ScaleUpPolicy
) -> tuple[int, Reason, str | None]:
    """Stage 3: immediate, step-limited unless the load is far above the ready pods' capacity."""
    limit = max(math.ceil(current * (1 + policy.max_step_percent / 100)), current + policy.max_step_replicas)
    if need.replicas <= limit:
        return need.replicas, Reason.ABOVE_TARGET, None
    capacity = max(ready, 1)
    if need.top.need >= policy.panic_threshold * capacity:
        return need.replicas, Reason.PANIC, f"panic: load is {_fmt(need.top.need / capacity)}x capacity"
    return limit, Reason.SCALE_UP_LIMITED, f"step limited to {limit} (wants {need.replicas})"


def window_max(history: tuple[tuple[datetime, int], ...], now: datetime, window: float) -> int | None:
    """The highest recommendation whose run overlaps the last ``window`` seconds (none for a window
    of 0: no stabilization)."""
    if window <= 0:
        return None
    start = now - timedelta(seconds=window)
    best: int | None = None
    for i, (_, replicas) in enumerate(history):
        end = history[i + 1][0] if i + 1 < len(history) else now
        if end > start or i + 1 == len(history):
            best = replicas if best is None else max(best, replicas)
    return best


MAX_RUNS = 256  # recommendation runs kept in the window


def record(
    history: tuple[tuple[datetime, int], ...], now: datetime, replicas: int, window: float
) -> tuple[tuple[datetime, int], ...]:
    """Add a recommendation (a new run only when it differs) and drop runs that ended before the window."""
    runs = list(history)
    if not runs or runs[-1][1] != replicas:
        runs.append((now, replicas))
    start = now - timedelta(seconds=window)
    while len(runs) > 1 and runs[1][0] <= start:
        runs.pop(0)
    # Bounded (it is persisted in the status) without losing a peak: the two neighbouring runs closest
    # in count become one, from the first's start at the higher count (which can only hold replicas a
    # little longer); the current run stays as it is.
    while len(runs) > MAX_RUNS:
        i = min(range(len(runs) - 2), key=lambda j: (abs(runs[j][1] - runs[j + 1][1]), j))
        runs[i : i + 2] = [(runs[i][0], max(runs[i][1], runs[i + 1][1]))]
    return tuple(runs)


def scale_down(
    need: LoadRecommendation, current: int, spec: api.AutoscalingSpec, state: State, now: datetime
) -> tuple[int, Reason, str | None]:
    """Stage 4: only after a full window of data, outside the cooldown, stabilized and step-limited."""
    policy = spec.scale_down
    window = policy.stabilization_window_seconds
    have = (now - state.data_since).total_seconds() if state.data_since is not None else 0.0
    if have < window:
        return current, Reason.AWAITING_FULL_WINDOW, f"{int(have)} s of data, scale-down waits for {window} s"
    if state.last_scale_up_time is not None:
        since_up = (now - state.last_scale_up_time).total_seconds()
        if since_up < policy.cooldown_after_scale_up_seconds:
            return (
                current,
                Reason.SCALE_DOWN_COOLDOWN,
                f"scaled up {int(since_up)} s ago, cooldown {policy.cooldown_after_scale_up_seconds} s",
            )
    stabilized = max(need.replicas, window_max(state.history, now, window) or 0)
    if stabilized >= current:
        return (
            current,
            Reason.SCALE_DOWN_STABILIZED,
            f"recommendation was {stabilized} within the last {window} s",
        )
    floor = current - policy.max_step_replicas
    if stabilized < floor:
        return floor, Reason.SCALE_DOWN_LIMITED, f"step limited to {floor} (wants {stabilized})"
    return stabilized, Reason.BELOW_TARGET, None


@dataclass(frozen=True)
class Limits:
    """minReplicas and maxReplicas now, and the schedule window that set them (None: the spec's)."""

    min_replicas: int
    max_replicas: int
    window: str | None = None


def limits(spec: api.AutoscalingSpec, now: datetime) -> Limits:
    """The bounds at ``now``: the first schedule window that holds then (in its time zone; a window
    whose end is before its start runs past midnight, from the days it starts on), else the spec's."""
    lo, hi = spec.min_replicas, spec.max_replicas
    schedule = spec.schedule
    if schedule is None or not schedule.windows:
        return Limits(lo, hi)
    zone = schedule.zone()
    if zone is None:
        return Limits(lo, hi)  # an unknown zone: the spec's validation reports it
    local = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).astimezone(zone)
    minute = local.hour * 60 + local.minute
    today, yesterday = api.WEEKDAYS[local.weekday()], api.WEEKDAYS[(local.weekday() - 1) % 7]
    for w in schedule.windows:
        start, end = _clock_minutes(w.start), _clock_minutes(w.end)
        if start < end:
            inside = today in w.days and start <= minute < end
        else:
            inside = (today in w.days and minute >= start) or (yesterday in w.days and minute < end)
        if inside:
            wlo, whi = w.bounds(lo, hi)
            days = ",".join(w.days) if len(w.days) < len(api.WEEKDAYS) else "daily"
            return Limits(wlo, max(whi, wlo), f"schedule {days} {w.start}-{w.end} {schedule.time_zone}")
    return Limits(lo, hi)


def _clock_minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def bound(replicas: int, limit: Limits) -> tuple[int, Reason | None]:
    """Stage 5: minReplicas <= replicas <= maxReplicas (as the schedule sets them now)."""
    if replicas < limit.min_replicas:
        return limit.min_replicas, Reason.TOO_FEW_REPLICAS
    if replicas > limit.max_replicas:
        return limit.max_replicas, Reason.TOO_MANY_REPLICAS
    return replicas, None


# ------------------------------------------------------------------------------------------ decide


def _data_run_broken(state: State, spec: api.AutoscalingSpec, now: datetime) -> bool:
    """Whether the data run is broken: first evaluation since start, or evaluations stopped a while."""
    if state.last_evaluated is None:
        return True
    limit = max(2 * spec.evaluation_interval_seconds, spec.metrics.stale_after_seconds)
    return (now - state.last_evaluated).total_seconds() > limit


DEFAULT_SEED = Capacity(*DEFAULT_CAPACITY)  # no GPU named: the generic card's


def decide(
    obs: Observation, spec: api.AutoscalingSpec, state: State, now: datetime, seed: Capacity = DEFAULT_SEED
) -> Decision:
    """The replicas a QwenService should have now, why, and the state to remember."""
    current = obs.replicas
    window = spec.scale_down.stabilization_window_seconds
    usable = usable_samples(obs, spec)
    busy = sum(s.running + s.waiting for s in usable.values())
    before, first = state.idle, state.last_evaluated is None
    state = replace(state, idle=idle.track(before, obs.router, busy, now, first))
    if current == 0:
        # After a restart the counter kept in the status may be older than the last one read (it is
        # written lazily): then only requests held now wake the service.
        arrivals = None if first else before.arrivals
        return _stamp_scale_times(_at_zero(obs, spec, state, now, arrivals), current, now)
    traffic = combine(s.traffic for s in usable.values() if s.traffic is not None)
    fresh = None
    if traffic is not None:
        fresh, dispersion = surge.of(obs.router, before, now, traffic.requests_per_second)
        state = replace(state, idle=replace(state.idle, dispersion=dispersion))
    slo = _slo_plan(obs, spec, usable, traffic, state, now, seed, fresh)
    if slo is not None:
        state = replace(state, plan=slo.state)
    need = recommend(obs, spec, usable, traffic, slo)

    if need is None:
        why = obs.error or (
            "no ready pods"
            if not obs.ready_pods
            else f"no fresh metrics from {len(obs.ready_pods)} ready pod(s)"
            f" (stale after {spec.metrics.stale_after_seconds} s)"
        )
        bounds = limits(spec, now)
        replicas, limit = bound(current, bounds)
        new_state = replace(state, data_since=None, last_evaluated=now)
        reason = limit or Reason.METRICS_UNAVAILABLE
        message = f"holding {current} replicas: {why}"
        if limit:
            message = f"{_bound_message(limit, bounds)}; metrics unavailable: {why}"
        decision = Decision(replicas, reason, message, new_state, ready_replicas=len(obs.ready_pods))
        return _stamp_scale_times(decision, current, now)

    data_since = now if _data_run_broken(state, spec, now) or state.data_since is None else state.data_since
    state = replace(state, data_since=data_since, last_evaluated=now)
    ready = len(obs.ready_pods)
    replicas, reason, note = need.replicas, need.reason, None
    if need.replicas > current:
        replicas, reason, note = scale_up(need, current, ready, spec.scale_up)
    elif need.replicas < current:
        replicas, reason, note = scale_down(need, current, spec, state, now)
    bounds = limits(spec, now)
    bounded, limit = bound(replicas, bounds)
    message = need.message + (f"; {note}" if note else "")
    if limit is not None:
        reason, message = limit, f"{_bound_message(limit, bounds)}; {message}"
    state = replace(state, history=record(state.history, now, need.replicas, window))
    decision = Decision(bounded, reason, message, state, need.replicas, need.observation, ready)
    if bounded == 0:
        decision = _to_zero(decision, obs, current, now, spec.scale_down.zero_after_idle_seconds)
    return _stamp_scale_times(decision, current, now)


def _at_zero(
    obs: Observation, spec: api.AutoscalingSpec, state: State, now: datetime, arrivals: float | None
) -> Decision:
    """No replica runs: stay so while nothing comes; wake at once for a request the router holds (or
    one that arrived since the last reading), or when the router cannot be read."""
    state = replace(state, data_since=None, last_evaluated=now)
    bounds = limits(spec, now)
    if bounds.min_replicas > 0:
        message = f"{_bound_message(Reason.TOO_FEW_REPLICAS, bounds)}: starting from zero"
        return Decision(bounds.min_replicas, Reason.TOO_FEW_REPLICAS, message, state)
    router = obs.router
    if router is None or router.error is not None:
        why = "no router in front" if router is None else f"the router cannot be read ({router.error})"
        return Decision(1, Reason.WAKE, f"waking from zero: {why}; a request may be waiting", state)
    if idle.active(router, 0.0, arrivals):
        held = router.waiting
        wanted = max(1, math.ceil(held / spec.targets.concurrency())) if held else 1
        replicas = min(wanted, bounds.max_replicas)
        return Decision(
            replicas,
            Reason.WAKE,
            f"waking from zero: {_fmt(held)} request(s) held at the router, "
            f"{_fmt(router.in_flight)} at the pods",
            state,
        )
    since = state.idle.last_request
    when = f"no request since {since:%Y-%m-%d %H:%M:%S} UTC" if since else "no request seen"
    remaining = idle.expected_remaining((now - since).total_seconds(), state.idle.gaps) if since else None
    if remaining is not None:
        wake = now + timedelta(seconds=remaining)
        when += (
            f"; the next expected around {wake:%Y-%m-%d %H:%M} UTC "
            "(half of the past gaps this long ended by then)"
        )
    else:
        when += "; too few past gaps this long to expect the next"
    return Decision(
        0,
        Reason.SCALED_TO_ZERO,
        f"at zero: {when}; the router holds the next request while a replica starts",
        state,
    )


def _to_zero(
    decision: Decision, obs: Observation, current: int, now: datetime, fixed: int | None
) -> Decision:
    """The load asks for zero and minReplicas allows it: go only when the idle rule says so
    (:func:`qwen_operator.idle.may_sleep`), else keep one replica."""
    router, st = obs.router, decision.state
    if router is None or router.error is not None:
        why = "no router in front" if router is None else f"the router cannot be read ({router.error})"
        return _keep_one(decision, current, f"not to zero: {why}")
    since = st.idle.last_request
    idle_for = (now - since).total_seconds() if since is not None else 0.0
    cold = idle.cold_start_seconds(obs.cold_starts, st.plan.cold_start_seconds)
    sleep = idle.may_sleep(idle_for, st.idle.gaps, cold, fixed)
    if not sleep.ok:
        return _keep_one(decision, current, sleep.message)
    message = f"{sleep.message}: to zero; the router holds the next request while a replica starts"
    return replace(decision, replicas=0, reason=Reason.SCALED_TO_ZERO, message=message)


def _keep_one(decision: Decision, current: int, why: str) -> Decision:
    if current > 1:  # down to one, as the load asks, and no further for now
        return replace(decision, replicas=1, message=f"{decision.message}; {why}")
    return replace(decision, replicas=1, reason=Reason.AWAITING_IDLE, message=f"{decision.message}; {why}")


def _slo_plan(
    obs: Observation,
    spec: api.AutoscalingSpec,
    usable: Mapping[str, PodSample],
    traffic: Traffic | None,
    state: State,
    now: datetime,
    seed: Capacity,
    fresh: surge.Surge | None = None,
) -> Plan | None:
    """SLO mode's plan from the ready pods' traffic (and a surge the router saw since), or None (no
    SLO, or no traffic yet)."""
    if spec.slo is None:
        return None
    seen = Seen(
        traffic,
        len(obs.ready_pods),
        running=sum(s.running for s in usable.values()),
        waiting=sum(s.waiting for s in usable.values()),
        kv=kv_usages(usable),
        kv_target=spec.targets.kv_cache_usage,
        cold_starts=obs.cold_starts,
        node_waits=obs.node_waits,
        waiting_for_node=obs.waiting_for_node,
        surge=fresh,
    )
    return plan(seen, spec.slo, seed, state.plan, now)


def _bound_message(limit: Reason, bounds: Limits) -> str:
    by = f" ({bounds.window})" if bounds.window else ""
    if limit is Reason.TOO_FEW_REPLICAS:
        return f"at minReplicas {bounds.min_replicas}{by}"
    return f"at maxReplicas {bounds.max_replicas}{by}"


def _stamp_scale_times(decision: Decision, current: int, now: datetime) -> Decision:
    """Stamp the scale times when the count moves."""
    if decision.replicas == current:
        return decision
    state = replace(decision.state, last_scale_time=now)
    if decision.replicas > current:
        state = replace(state, last_scale_up_time=now)
    return replace(decision, state=state)


def deletion_costs(obs: Observation) -> dict[str, int]:
    """``pod-deletion-cost`` per ready pod: busier pods cost more, so idle ones go first.

    Requests in flight weigh 100 each, KV-cache usage adds up to 100. A ready pod without data may be
    silent because it is overloaded, so it counts as the busiest: never removed first on a guess.
    """
    costs = {
        pod: round(100 * (s.running + s.waiting) + 100 * (s.kv_cache_usage or 0))
        for pod, s in obs.samples.items()
        if pod in obs.ready_pods and math.isfinite(s.running + s.waiting + (s.kv_cache_usage or 0))
    }
    busiest = max(costs.values(), default=0)
    return {pod: costs.get(pod, busiest) for pod in obs.ready_pods}
