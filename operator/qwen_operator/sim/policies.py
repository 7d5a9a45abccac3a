"""Scaling policies side by side, each from its published rules and defaults (docs/benchmark.md).

Every policy sees only what it would see in a cluster: the latest Prometheus sample of each ready pod
(running, waiting, KV usage, and for the cloud rule a GPU-busy fraction), pod readiness, and the current
replica count; it returns the replicas it asks for. ``ours`` is the operator's real ``decide()``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from qwen_operator import api, scaling

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    """One pod's scrape: what vLLM's /metrics (and DCGM, for ``busy``) said at ``at``."""

    running: float
    waiting: float
    kv: float
    busy: float  # share of the last scrape interval the GPU spent in steps
    at: float


@dataclass(frozen=True)
class View:
    now: float
    replicas: int  # the Deployment's spec.replicas
    ready: tuple[str, ...]  # ready pods that take traffic
    samples: Mapping[str, Sample]  # latest scrape per ready pod (absent until the first scrape)
    max_num_seqs: int

    def fresh(self) -> list[Sample]:
        return [self.samples[p] for p in self.ready if p in self.samples]


class Policy(Protocol):
    name: str
    interval: float  # seconds between evaluations
    deletion_cost: bool  # sets pod-deletion-cost so the idlest pods go first on scale-down

    def desired(self, view: View) -> int: ...


def _clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


@dataclass
class Static:
    replicas: int
    name: str = ""
    interval: float = 3600.0
    deletion_cost: bool = False

    def __post_init__(self) -> None:
        self.name = self.name or f"static:{self.replicas}"

    def desired(self, view: View) -> int:
        return self.replicas


@dataclass
class StepRule:
    """The rule cloud platforms offer: utilisation > 70% for 1 min -> +1, < 30% for 3 min -> -1.

    Utilisation proxies: ``gpu`` (GPU busy fraction, as DCGM reports it) or ``kv``
    (max(KV usage, running / max_num_seqs)), averaged over the ready pods.
    """

    min_replicas: int
    max_replicas: int
    proxy: str = "gpu"
    high: float = 0.7
    low: float = 0.3
    interval: float = 60.0
    deletion_cost: bool = False
    name: str = ""
    _history: deque[float] = field(default_factory=lambda: deque(maxlen=3))

    def __post_init__(self) -> None:
        self.name = self.name or ("step" if self.proxy == "gpu" else "step-kv")

    def utilisation(self, s: Sample, max_num_seqs: int) -> float:
        return s.busy if self.proxy == "gpu" else max(s.kv, s.running / max_num_seqs)

    def desired(self, view: View) -> int:
        samples = view.fresh()
        if not samples:
            return view.replicas
        self._history.append(sum(self.utilisation(s, view.max_num_seqs) for s in samples) / len(samples))
        if self._history[-1] > self.high:
            self._history.clear()  # the alarm fired; it re-arms on fresh data
            return _clamp(view.replicas + 1, self.min_replicas, self.max_replicas)
        if len(self._history) == 3 and max(self._history) < self.low:
            self._history.clear()
            return _clamp(view.replicas - 1, self.min_replicas, self.max_replicas)
        return view.replicas


def _concurrency(s: Sample, metric: str) -> float:
    return s.waiting if metric == "waiting" else s.running + s.waiting


@dataclass
class HPA:
    """Kubernetes HPA v2 on a Pods metric (AverageValue): the replica calculator with its defaults.

    15 s sync, 10% tolerance, unready pods count as 0 on scale-up and missing metrics as the target on
    scale-down, scale-up at most max(100%, 4 pods) per 15 s, scale-down to the highest recommendation of
    the last 300 s.
    """

    min_replicas: int
    max_replicas: int
    target: float
    metric: str = "concurrency"  # or "waiting"
    interval: float = 15.0
    tolerance: float = 0.1
    stabilization: float = 300.0
    deletion_cost: bool = False
    name: str = ""
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.name = self.name or ("hpa" if self.metric == "concurrency" else "hpa-waiting")

    def recommend(self, view: View) -> int:
        current = view.replicas
        values = {p: _concurrency(view.samples[p], self.metric) for p in view.ready if p in view.samples}
        if not values:
            return current
        ratio = sum(values.values()) / len(values) / self.target
        missing = [p for p in view.ready if p not in values]
        unready = max(0, current - len(view.ready))
        if not missing and not unready:
            return current if abs(ratio - 1) <= self.tolerance else math.ceil(ratio * len(values))
        if ratio > 1:  # scale-up: the pods without data count as idle
            total, count = sum(values.values()), len(values) + len(missing) + unready
        else:  # scale-down: missing metrics count as exactly at target
            total, count = sum(values.values()) + self.target * len(missing), len(values) + len(missing)
        new_ratio = total / count / self.target
        if abs(new_ratio - 1) <= self.tolerance or (new_ratio > 1) != (ratio > 1):
            return current
        return math.ceil(new_ratio * count)

    def desired(self, view: View) -> int:
        return self.stabilize(view.now, view.replicas, self.recommend(view))

    def stabilize(self, now: float, current: int, recommended: int) -> int:
        self._recommendations.append((now, recommended))
        while self._recommendations and self._recommendations[0][0] < now - self.stabilization:
            self._recommendations.popleft()
        desired = recommended
        if desired < current:
            desired = min(current, max(r for _, r in self._recommendations))
        up_limit = max(2 * current, current + 4)
        return _clamp(min(desired, up_limit), self.min_replicas, self.max_replicas)


@dataclass
class KEDA(HPA):
    """KEDA's Prometheus scaler: the query (sum of running + waiting) is polled every 30 s and handed to
    the HPA as an External metric with an AverageValue target (desired = ceil(total / target))."""

    polling: float = 30.0
    _cached: float | None = None
    _polled_at: float = -math.inf

    def __post_init__(self) -> None:
        self.name = self.name or "keda"

    def recommend(self, view: View) -> int:
        if view.now - self._polled_at >= self.polling:
            samples = view.fresh()
            self._cached = sum(_concurrency(s, self.metric) for s in samples) if samples else None
            self._polled_at = view.now
        if self._cached is None:
            return view.replicas
        ratio = self._cached / (self.target * view.replicas)
        if abs(ratio - 1) <= self.tolerance:
            return view.replicas
        return math.ceil(self._cached / self.target)


@dataclass
class KPA:
    """Knative's KPA: concurrency per pod over a 60 s stable and a 6 s panic window, 2 s ticks; panic when
    the panic window asks for 200% of the ready pods; no scale-down while panicking (60 s); scale-down at
    most to half the ready pods per tick."""

    min_replicas: int
    max_replicas: int
    target: float
    interval: float = 2.0
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0
    max_scale_down_rate: float = 2.0
    deletion_cost: bool = False
    name: str = "kpa"
    _observed: deque[tuple[float, float]] = field(default_factory=deque)
    _panic_until: float = -math.inf
    _panic_desired: int = 0

    def desired(self, view: View) -> int:
        samples = view.fresh()
        if not samples:
            return view.replicas
        self._observed.append((view.now, sum(s.running + s.waiting for s in samples)))
        while self._observed[0][0] <= view.now - self.stable_window:
            self._observed.popleft()
        stable = [c for _, c in self._observed]
        panic = [c for t, c in self._observed if t > view.now - self.panic_window]
        want_stable = math.ceil(sum(stable) / len(stable) / self.target)
        want_panic = math.ceil(sum(panic) / len(panic) / self.target)
        ready = max(1, len(view.ready))
        if want_panic / ready >= self.panic_threshold:
            self._panic_until = view.now + self.stable_window
        if view.now < self._panic_until:
            self._panic_desired = max(self._panic_desired, want_panic, view.replicas)
            desired = self._panic_desired
        else:
            self._panic_desired = 0
            desired = max(want_stable, math.floor(ready / self.max_scale_down_rate))
        return _clamp(desired, self.min_replicas, self.max_replicas)


@dataclass
class APA:
    """AIBrix's APA: mean concurrency per ready pod against the target, 10% tolerance, at most 2x up or
    1/2 down per step, no scale-down within 300 s of the last scaling."""

    min_replicas: int
    max_replicas: int
    target: float
    interval: float = 15.0
    tolerance: float = 0.1
    max_rate: float = 2.0
    cooldown: float = 300.0
    deletion_cost: bool = False
    name: str = "aibrix"
    _last_scale: float = -math.inf

    def desired(self, view: View) -> int:
        samples = view.fresh()
        if not samples:
            return view.replicas
        ratio = sum(s.running + s.waiting for s in samples) / len(samples) / self.target
        current = view.replicas
        if abs(ratio - 1) <= self.tolerance:
            return current
        want = math.ceil(len(samples) * ratio)
        want = min(want, math.ceil(current * self.max_rate))
        want = max(want, math.floor(current / self.max_rate))
        if want < current and view.now - self._last_scale < self.cooldown:
            return current
        want = _clamp(want, self.min_replicas, self.max_replicas)
        if want != current:
            self._last_scale = view.now
        return want


@dataclass
class Ours:
    """The operator's :func:`qwen_operator.scaling.decide`, fed the Observation its Prometheus source
    builds."""

    spec: api.AutoscalingSpec
    name: str = "ours"
    deletion_cost: bool = True
    state: scaling.State = field(default_factory=scaling.State)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    interval: float = 0.0

    def __post_init__(self) -> None:
        self.interval = float(self.spec.evaluation_interval_seconds)

    def observation(self, view: View) -> scaling.Observation:
        return scaling.Observation(
            replicas=view.replicas,
            ready_pods=view.ready,
            samples={
                pod: scaling.PodSample(s.running, s.waiting, s.kv, view.now - s.at)
                for pod, s in view.samples.items()
                if pod in view.ready
            },
        )

    def desired(self, view: View) -> int:
        decision = scaling.decide(
            self.observation(view), self.spec, self.state, EPOCH + timedelta(seconds=view.now)
        )
        self.state = decision.state
        self.reasons.append((view.now, decision.reason.value))
        return decision.replicas


@dataclass
class Schedule:
    """The clairvoyant schedule: replicas known in advance per window, asked for ``lead`` seconds early.

    ``peak(t0, t1)`` is the most replicas planned for any moment in [t0, t1]: a pod launched for a
    window one lead ahead is kept through every window until then, not only the two ends."""

    peak: Callable[[float, float], int]
    lead: float
    interval: float = 5.0
    name: str = "oracle"
    deletion_cost: bool = True

    def desired(self, view: View) -> int:
        return self.peak(view.now, view.now + self.lead)


def ours_spec(
    min_replicas: int,
    max_replicas: int,
    spec: api.AutoscalingSpec | None = None,
    gpu_product: str | None = None,
) -> api.AutoscalingSpec:
    """Our defaults with the scenario's bounds, and the concurrency target the operator would use for
    pods pinned to ``gpu_product`` (its nodeSelector); or a user's QwenService autoscaling block."""
    if spec is not None:
        return spec.model_copy(update={"enabled": True})
    targets = api.ScalingTargets(concurrency_per_replica=api.default_concurrency(gpu_product))
    return api.AutoscalingSpec(
        enabled=True, min_replicas=min_replicas, max_replicas=max_replicas, targets=targets
    )


def make(
    name: str,
    min_replicas: int,
    max_replicas: int,
    spec: api.AutoscalingSpec | None = None,
    gpu_product: str | None = None,
) -> Policy:
    """A policy by its CLI name; baselines use ``ours``' concurrency target so all aim at the same load."""
    auto = ours_spec(min_replicas, max_replicas, spec, gpu_product)
    lo, hi = auto.min_replicas, auto.max_replicas
    target = auto.targets.concurrency()
    if name.startswith("static:"):
        return Static(int(name.split(":", 1)[1]))
    factories: dict[str, Callable[[], Policy]] = {
        "ours": lambda: Ours(auto),
        "hpa": lambda: HPA(lo, hi, target),
        "hpa-waiting": lambda: HPA(lo, hi, max(1.0, target / 4), metric="waiting"),
        "keda": lambda: KEDA(lo, hi, target),
        "kpa": lambda: KPA(lo, hi, target),
        "aibrix": lambda: APA(lo, hi, target),
        "step": lambda: StepRule(lo, hi, "gpu"),
        "step-kv": lambda: StepRule(lo, hi, "kv"),
    }
    if name not in factories:
        raise ValueError(
            f"unknown policy {name!r}; choose from {', '.join([*factories, 'static:N', 'oracle'])}"
        )
    return factories[name]()


POLICIES = ("ours", "hpa", "hpa-waiting", "keda", "kpa", "aibrix", "step", "step-kv")
