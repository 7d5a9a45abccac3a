"""Scaling policies side by side, each from its published rules and defaults (docs/benchmark.md).

Every policy sees only what it would see in a cluster: the latest Prometheus sample of each ready pod
(running, waiting, KV usage, and for the cloud rule a GPU-busy fraction), pod readiness, and the current
replica count; it returns the replicas it asks for. ``ours`` is the operator's real ``decide()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from qwen_operator import api, scaling
from qwen_operator.gpu_targets import default_concurrency, seed_capacity
from qwen_operator.idle import RouterSample
from qwen_operator.scaling import Capacity
from qwen_operator.traffic import TRAFFIC_WINDOW_SECONDS, Totals, Traffic
from qwen_tools.sim import peers

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    """One pod's scrape: what vLLM's /metrics (and DCGM, for ``busy``) said at ``at``."""

    running: float
    waiting: float
    kv: float
    busy: float  # share of the last scrape interval the GPU spent in steps
    at: float
    totals: Totals | None = None  # vLLM's cumulative counters and histograms at this scrape


@dataclass(frozen=True)
class View:
    now: float
    replicas: int  # the Deployment's spec.replicas
    ready: tuple[str, ...]  # ready pods that take traffic
    samples: Mapping[str, Sample]  # latest scrape per ready pod (absent until the first scrape)
    max_num_seqs: int
    starts: tuple[float, ...] = ()  # seconds from creation to ready of the ready pods
    router: RouterSample | None = None  # what our router's /metrics says now (routing "builtin")
    node_waits: tuple[float, ...] = ()  # of the ready pods, seconds from creation to a node
    unscheduled: int = 0  # pods waiting for a node now

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
    """A cloud provider's alarm-driven rule, as AWS Application Auto Scaling's target tracking sets up its
    CloudWatch alarms (docs.aws.amazon.com/autoscaling/application/userguide/
    application-auto-scaling-target-tracking.html): scale out when the metric is above the high mark
    for 3 consecutive one-minute datapoints, scale in when it is below the low mark for 15; here one
    replica per step (a step scaling adjustment of +1 / -1).

    Utilisation proxies: ``gpu`` (GPU busy fraction, as DCGM reports it) or ``kv``
    (max(KV usage, running / max_num_seqs)), averaged over the ready pods.
    """

    min_replicas: int
    max_replicas: int
    proxy: str = "gpu"
    high: float = 0.7
    low: float = 0.3
    out_points: int = 3
    in_points: int = 15
    interval: float = 60.0
    deletion_cost: bool = True
    name: str = ""
    _history: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.name = self.name or ("step" if self.proxy == "gpu" else "step-kv")

    def utilisation(self, s: Sample, max_num_seqs: int) -> float:
        return s.busy if self.proxy == "gpu" else max(s.kv, s.running / max_num_seqs)

    def desired(self, view: View) -> int:
        samples = view.fresh()
        if not samples:
            self._history.clear()  # a missing datapoint breaks the run of consecutive ones
            return view.replicas
        self._history.append(sum(self.utilisation(s, view.max_num_seqs) for s in samples) / len(samples))
        while len(self._history) > max(self.out_points, self.in_points):
            self._history.popleft()
        recent = list(self._history)
        if len(recent) >= self.out_points and min(recent[-self.out_points :]) > self.high:
            self._history.clear()  # the alarm fired; it re-arms on fresh datapoints
            return _clamp(view.replicas + 1, self.min_replicas, self.max_replicas)
        if len(recent) >= self.in_points and max(recent[-self.in_points :]) < self.low:
            self._history.clear()
            return _clamp(view.replicas - 1, self.min_replicas, self.max_replicas)
        return view.replicas


def _concurrency(s: Sample, metric: str) -> float:
    return s.waiting if metric == "waiting" else s.running + s.waiting


@dataclass
class HPA:
    """Kubernetes HPA v2 on a Pods metric (AverageValue), with its defaults: 15 s sync, 10% tolerance,
    the replica calculator for Pods metrics (peers.hpa_pods_metric_replicas: starting pods report no
    metric yet and count as missing), the initial recommendation and the default behavior
    (peers.HPABehavior)."""

    min_replicas: int
    max_replicas: int
    target: float
    metric: str = "concurrency"  # or "waiting"
    interval: float = 15.0
    tolerance: float = 0.1
    stabilization: float = 300.0
    deletion_cost: bool = True
    name: str = ""
    _behavior: peers.HPABehavior | None = None

    def __post_init__(self) -> None:
        self.name = self.name or ("hpa" if self.metric == "concurrency" else "hpa-waiting")

    def recommend(self, view: View) -> int:
        metrics = {p: _concurrency(view.samples[p], self.metric) for p in view.ready if p in view.samples}
        missing = max(0, view.replicas - len(metrics))  # starting, or not scraped yet
        return peers.hpa_pods_metric_replicas(view.replicas, metrics, missing, 0, self.target, self.tolerance)

    def desired(self, view: View) -> int:
        if self._behavior is None:
            self._behavior = peers.HPABehavior(self.min_replicas, self.max_replicas, self.stabilization)
        return self._behavior.normalize(view.now, view.replicas, self.recommend(view))


@dataclass
class KEDA(HPA):
    """KEDA's Prometheus scaler with minReplicaCount > 0: the HPA (same behavior) polls KEDA's metrics
    adapter every sync, which runs the query (the sum of running + waiting over the pods) each time
    (useCachedMetrics is off by default), as an External metric with an AverageValue target."""

    def __post_init__(self) -> None:
        self.name = self.name or "keda"

    def recommend(self, view: View) -> int:
        samples = view.fresh()
        if not samples:
            return view.replicas  # an empty query result: the HPA keeps the scale
        total = sum(_concurrency(s, self.metric) for s in samples)
        return peers.hpa_external_per_pod_replicas(view.replicas, total, self.target, self.tolerance)


@dataclass
class KPA:
    """Knative's KPA (peers.KPADecider), fed as the autoscaler is: the activator and queue-proxies report
    requests in flight every second (``observe_second``), averaged over a 60 s stable and a 6 s panic
    window, a decision every 2 s. The per-pod target is ``target`` x the target utilization (0.7 by
    default); the decider starts in panic when more than one pod is ready."""

    min_replicas: int
    max_replicas: int
    target: float
    utilization: float = 0.7
    interval: float = 2.0
    stable_window: float = 60.0
    panic_window_percent: float = 10.0
    panic_threshold: float = 2.0
    scale_down_delay: float = 0.0
    deletion_cost: bool = True
    name: str = "kpa"
    _seconds: deque[tuple[float, float]] = field(default_factory=deque)
    _decider: peers.KPADecider | None = None

    def observe_second(self, now: float, concurrency: float) -> None:
        self._seconds.append((now, concurrency))
        while self._seconds[0][0] <= now - self.stable_window:
            self._seconds.popleft()

    def desired(self, view: View) -> int:
        if self._decider is None:
            self._decider = peers.KPADecider.starting(
                len(view.ready),
                view.now,
                target=self.target * self.utilization,
                panic_threshold=self.panic_threshold,
                stable_window=self.stable_window,
                scale_down_delay=self.scale_down_delay,
            )
        if not self._seconds:
            return view.replicas  # no data yet: no decision
        panic_window = self.stable_window * self.panic_window_percent / 100
        stable = [c for _, c in self._seconds]
        panic = [c for t, c in self._seconds if t > view.now - panic_window] or stable[-1:]
        want = self._decider.scale(
            view.now, len(view.ready), sum(stable) / len(stable), sum(panic) / len(panic)
        )
        return _clamp(want, self.min_replicas, self.max_replicas)


@dataclass
class APA:
    """AIBrix's APA: the mean concurrency per pod over the 180 s stable window (sampled each 10 s
    evaluation) against the target (peers.apa_replicas: 10% tolerances, at most 2x up or 1/2 down per
    step), then the controller's cooldown windows (peers.APAStabilizer: none up, 300 s down)."""

    min_replicas: int
    max_replicas: int
    target: float
    interval: float = 10.0
    window: float = 180.0
    deletion_cost: bool = True
    name: str = "aibrix"
    _values: deque[tuple[float, float]] = field(default_factory=deque)
    _stabilizer: peers.APAStabilizer = field(default_factory=peers.APAStabilizer)

    def desired(self, view: View) -> int:
        samples = view.fresh()
        if samples:
            self._values.append((view.now, sum(s.running + s.waiting for s in samples) / len(samples)))
        while self._values and self._values[0][0] <= view.now - self.window:
            self._values.popleft()
        if not self._values:
            return view.replicas
        use = sum(v for _, v in self._values) / len(self._values)
        want = _clamp(
            peers.apa_replicas(view.replicas, use, self.target), self.min_replicas, self.max_replicas
        )
        return self._stabilizer.stabilize(view.now, view.replicas, want)


@dataclass
class Ours:
    """The operator's :func:`qwen_operator.scaling.decide`, fed the Observation its Prometheus source
    builds: the latest gauges, and each pod's counters' increase over the last minute."""

    spec: api.AutoscalingSpec
    name: str = "ours"
    deletion_cost: bool = True
    seed: Capacity = scaling.DEFAULT_SEED  # the GPU's, as the operator reads the nodeSelector's
    state: scaling.State = field(default_factory=scaling.State)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    interval: float = 0.0
    scrapes: dict[str, deque[tuple[float, Totals]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.interval = float(self.spec.evaluation_interval_seconds)

    def _traffic(self, pod: str, sample: Sample) -> Traffic | None:
        """``increase(...[1m])``: the pod's counters since its oldest scrape within the window."""
        if sample.totals is None:
            return None
        kept = self.scrapes.setdefault(pod, deque())
        if not kept or kept[-1][0] != sample.at:
            kept.append((sample.at, sample.totals))
        while kept and kept[0][0] < sample.at - TRAFFIC_WINDOW_SECONDS:
            kept.popleft()
        first_at, first = kept[0]
        return sample.totals.since(first, sample.at - first_at) if sample.at > first_at else None

    def observation(self, view: View) -> scaling.Observation:
        for gone in [p for p in self.scrapes if p not in view.samples]:
            del self.scrapes[gone]
        return scaling.Observation(
            replicas=view.replicas,
            ready_pods=view.ready,
            samples={
                pod: scaling.PodSample(s.running, s.waiting, s.kv, view.now - s.at, self._traffic(pod, s))
                for pod, s in view.samples.items()
                if pod in view.ready
            },
            cold_starts=view.starts,
            router=view.router,
            node_waits=view.node_waits,
            waiting_for_node=view.unscheduled,
        )

    def desired(self, view: View) -> int:
        decision = scaling.decide(
            self.observation(view), self.spec, self.state, EPOCH + timedelta(seconds=view.now), self.seed
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
    targets = api.ScalingTargets(concurrency_per_replica=default_concurrency(gpu_product))
    return api.AutoscalingSpec(
        enabled=True, min_replicas=min_replicas, max_replicas=max_replicas, targets=targets
    )


def slo_mode(auto: api.AutoscalingSpec, gpu_product: str | None, ttft: float | None = None) -> Ours:
    """SLO mode as a user sets it: ``auto`` with its ``slo`` (else TTFT <= 2 s for 99%, or ``ttft``),
    its model seeded from ``gpu_product`` as the operator seeds it from the nodeSelector."""
    slo = auto.slo or api.LatencySLO(time_to_first_token_seconds=2.0)
    slo = slo.model_copy(update={} if ttft is None else {"time_to_first_token_seconds": ttft})
    spec = auto.model_copy(update={"slo": slo, "enabled": True})
    return Ours(spec, seed=Capacity(*seed_capacity(gpu_product)))


def make(
    name: str,
    min_replicas: int,
    max_replicas: int,
    spec: api.AutoscalingSpec | None = None,
    gpu_product: str | None = None,
) -> Policy:
    """A policy by its CLI name. ``ours`` is what the README recommends: SLO mode (TTFT <= 2 s for 99%,
    its capacity seeded from the GPU), or with ``spec``, that autoscaling block as the operator runs it;
    ``ours-target`` is the concurrency target alone. Baselines use the concurrency target so all aim at
    the same load."""
    auto = ours_spec(min_replicas, max_replicas, spec, gpu_product)
    lo, hi = auto.min_replicas, auto.max_replicas
    target = auto.targets.concurrency()
    if name.startswith("static:"):
        return Static(int(name.split(":", 1)[1]))
    factories: dict[str, Callable[[], Policy]] = {
        "ours": lambda: slo_mode(auto, gpu_product) if spec is None or spec.slo else Ours(auto),
        "ours-target": lambda: Ours(auto, name="ours-target"),
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


POLICIES = ("ours", "ours-target", "hpa", "hpa-waiting", "keda", "kpa", "aibrix", "step", "step-kv")
