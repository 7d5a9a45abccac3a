"""The peers' scaling rules, written from their upstream code and defaults (pure).

Each rule is a small function or class with the upstream's own inputs, so that tests/unit/test_peers.py
can check it on the cases of the upstream's own tests (cited there); sim.policies adapts them to the
simulator's view of a cluster.

- Kubernetes HPA (pkg/controller/podautoscaler: replica_calculator.go, horizontal.go): the replica
  calculator for a Pods metric and for an External metric with an AverageValue target (what KEDA hands
  it), the initial recommendation, and the default scaling behaviour.
- Knative KPA (pkg/autoscaler/scaling/autoscaler.go): the decider, panic mode, starting in panic.
- AIBrix APA (pkg/controller/podautoscaler/algorithm/apa.go and the controller's
  stabilizeRecommendation).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------------------------- HPA


def hpa_pods_metric_replicas(
    current: int,
    metrics: Mapping[str, float],
    missing: int,
    pending: int,
    target: float,
    tolerance: float = 0.1,
) -> int:
    """calcPlainMetricReplicas for a Pods metric with an AverageValue target.

    ``metrics`` holds the pods that report the metric (for a non-CPU metric every such pod counts as
    ready, whatever its Ready condition), ``missing`` the running pods without a value, ``pending`` the
    pods not running yet. Missing pods count as at the target when shrinking and as 0 when growing;
    pending pods as 0 when growing. No metric at all is an error upstream: the HPA keeps ``current``.
    """
    if not metrics:
        return current
    values = list(metrics.values())
    ratio = sum(values) / len(values) / target
    scale_up_with_pending = pending > 0 and ratio > 1.0
    if not scale_up_with_pending and missing == 0:
        if abs(ratio - 1.0) <= tolerance:
            return current
        return math.ceil(ratio * len(values))
    if missing:
        values += [target if ratio < 1.0 else 0.0] * missing
    if scale_up_with_pending:
        values += [0.0] * pending
    new_ratio = sum(values) / len(values) / target
    if abs(new_ratio - 1.0) <= tolerance or (new_ratio > 1.0) != (ratio > 1.0):
        return current  # within tolerance, or the correction flipped the direction
    replicas = math.ceil(new_ratio * len(values))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current
    return replicas


def hpa_external_per_pod_replicas(
    status_replicas: int, usage: float, target_per_pod: float, tolerance: float = 0.1
) -> int:
    """GetExternalPerPodMetricReplicas: an External metric (one total, such as KEDA's query) with an
    AverageValue target."""
    ratio = usage / (target_per_pod * status_replicas) if status_replicas else math.inf
    if abs(1.0 - ratio) <= tolerance:
        return status_replicas
    return math.ceil(usage / target_per_pod)


@dataclass
class HPABehavior:
    """The HPA's default behavior (autoscaling/v2): scale up at once by max(100%, 4 pods) per 15 s;
    scale down to the highest recommendation of the last 300 s, by at most 100% per 15 s. The first
    time it sees a target it records the current replicas as a recommendation, so a new (or restarted)
    HPA cannot shrink for a full window (recordInitialRecommendation)."""

    min_replicas: int
    max_replicas: int
    down_window: float = 300.0
    up_window: float = 0.0
    up_percent: float = 100.0
    up_pods: int = 4
    _recommendations: deque[tuple[float, int]] | None = None

    def normalize(self, now: float, current: int, recommended: int) -> int:
        if self._recommendations is None:
            self._recommendations = deque([(now, current)])
        up, down = recommended, recommended
        for at, value in self._recommendations:
            if at > now - self.up_window:
                up = min(up, value)
            if at > now - self.down_window:
                down = max(down, value)
        desired = min(max(current, up), down)
        self._recommendations.append((now, recommended))
        horizon = now - max(self.down_window, self.up_window)
        while self._recommendations and self._recommendations[0][0] <= horizon:
            self._recommendations.popleft()
        up_limit = max(math.ceil(current * (1 + self.up_percent / 100)), current + self.up_pods)
        desired = min(desired, up_limit)
        return max(self.min_replicas, min(self.max_replicas, desired))


# ----------------------------------------------------------------------------------------------- KPA


@dataclass
class KPADecider:
    """Knative's autoscaler.Scale on given stable and panic values (the decider's state: panic start
    and the most pods asked for while panicking). ``target`` is the TargetValue: the per-pod target
    times the target utilization (0.7 by default)."""

    target: float
    panic_threshold: float = 2.0
    stable_window: float = 60.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay: float = 0.0
    panic_since: float | None = None
    max_panic_pods: int = 0
    _delayed: deque[tuple[float, int]] = field(default_factory=deque)

    @classmethod
    def starting(cls, ready: int, now: float, **kwargs: float) -> KPADecider:
        """A new autoscaler starts in panic when more than one pod is ready, holding that count until
        its windows have data (newAutoscaler)."""
        decider = cls(**kwargs)  # type: ignore[arg-type]
        if ready > 1:
            decider.panic_since, decider.max_panic_pods = now, ready
        return decider

    def scale(self, now: float, ready: int, stable: float, panic: float) -> int:
        pods = max(1.0, float(ready))
        max_up = math.ceil(self.max_scale_up_rate * pods)
        max_down = math.floor(pods / self.max_scale_down_rate)
        want_stable, want_panic = math.ceil(stable / self.target), math.ceil(panic / self.target)
        desired_stable = int(min(max(want_stable, max_down), max_up))
        desired_panic = int(min(max(want_panic, max_down), max_up))
        over = want_panic / pods >= self.panic_threshold
        if over:
            self.panic_since = now  # start, or extend
        elif self.panic_since is not None and self.panic_since + self.stable_window < now:
            self.panic_since, self.max_panic_pods = None, 0
        desired = desired_stable
        if self.panic_since is not None:
            desired = max(desired, desired_panic)
            self.max_panic_pods = max(self.max_panic_pods, desired)
            desired = self.max_panic_pods  # never down while panicking
        if self.scale_down_delay > 0:  # the highest of the delay window
            self._delayed.append((now, desired))
            while self._delayed[0][0] <= now - self.scale_down_delay:
                self._delayed.popleft()
            desired = max(v for _, v in self._delayed)
        return desired


# ----------------------------------------------------------------------------------------------- APA


def apa_replicas(
    current: int,
    use_per_pod: float,
    target: float,
    up_tolerance: float = 0.1,
    down_tolerance: float = 0.1,
    max_scale_up_rate: float = 2.0,
    max_scale_down_rate: float = 2.0,
) -> int:
    """APAAlgorithm.computeTargetReplicas."""
    ratio = use_per_pod / target
    if ratio > 1 + up_tolerance:
        return min(math.ceil(current * ratio), math.ceil(max_scale_up_rate * current))
    if ratio < 1 - down_tolerance:
        return max(math.ceil(current * ratio), math.floor(current / max_scale_down_rate))
    return current


@dataclass
class APAStabilizer:
    """The PodAutoscaler controller's stabilizeRecommendation: the highest recommendation of the
    scale-up cooldown window when growing, the lowest of the scale-down cooldown window (300 s by
    default) when shrinking; no change returns the current replicas."""

    up_window: float = 0.0
    down_window: float = 300.0
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def stabilize(self, now: float, current: int, recommended: int) -> int:
        self._history.append((now, recommended))
        while self._history and self._history[0][0] <= now - max(self.up_window, self.down_window):
            self._history.popleft()
        if recommended == current:
            return current
        grow = recommended > current
        window = self.up_window if grow else self.down_window
        inside = [v for at, v in self._history if at > now - window]
        if not inside:
            return recommended
        return max(inside) if grow else min(inside)
