"""The peers' rules on the cases of their upstream's own tests (same inputs, same expected outputs).

Each test names the upstream file and test it takes its numbers from.
"""

from __future__ import annotations

import pytest

from qwen_tools.sim import peers

# ------------------------------------------------------------------------------------------- HPA


@pytest.mark.parametrize(
    ("name", "current", "levels", "target", "expected"),
    [
        ("TestReplicaCalcScaleUpCM", 3, [20000, 10000, 30000], 15000, 4),
        # A Pods metric ignores readiness: the unready pod's value counts (3 -> 6, not fewer).
        ("TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale", 3, [50000, 10000, 30000], 15000, 6),
        ("TestReplicaCalcScaleUpCMUnreadyHotCpuScaleWouldScaleDown", 3, [50000, 15000, 30000], 15000, 7),
        ("TestReplicaCalcScaleDownCM", 5, [12000, 12000, 12000, 12000, 12000], 20000, 3),
        ("TestReplicaCalcToleranceCM", 3, [20000, 21000, 21000], 20000, 3),
    ],
)
def test_hpa_pods_metric_replica_calculator(
    name: str, current: int, levels: list[int], target: int, expected: int
) -> None:
    """kubernetes pkg/controller/podautoscaler/replica_calculator_test.go, the podMetric cases."""
    metrics = {f"pod-{i}": float(v) for i, v in enumerate(levels)}
    assert peers.hpa_pods_metric_replicas(current, metrics, 0, 0, target) == expected, name


def test_hpa_configurable_tolerance() -> None:
    """replica_calculator_test.go TestReplicaCalcConfigurableToleranceCM: a 1% tolerance moves 3 -> 4."""
    metrics = {"a": 20000.0, "b": 21000.0, "c": 21000.0}
    assert peers.hpa_pods_metric_replicas(3, metrics, 0, 0, 20000, tolerance=0.01) == 4


def test_hpa_missing_metrics_count_at_the_target_when_shrinking() -> None:
    """replica_calculator_test.go TestReplicaCalcMissingMetrics (4 pods, 2 report 400 and 95 against
    100% of 1000: missing pods count at the target, so 4 -> 3, not 4 -> 1), on a Pods metric."""
    assert peers.hpa_pods_metric_replicas(4, {"a": 400.0, "b": 95.0}, 2, 0, 1000) == 3


def test_hpa_missing_metrics_count_as_zero_when_growing() -> None:
    """The same rule upward: two pods at 2x the target and two starting pods without metrics average
    exactly the target, so the HPA does not add pods for them (replica_calculator.go)."""
    assert peers.hpa_pods_metric_replicas(4, {"a": 32.0, "b": 32.0}, 2, 0, 16) == 4
    assert peers.hpa_pods_metric_replicas(4, {"a": 48.0, "b": 48.0}, 2, 0, 16) == 6


@pytest.mark.parametrize(
    ("name", "current", "usage", "per_pod", "expected"),
    [
        ("TestReplicaCalcScaleUpPerPodCMExternal", 3, 8600, 2150, 4),
        ("TestReplicaCalcScaleDownPerPodCMExternal", 5, 8600, 2867, 3),
        ("TestReplicaCalcTolerancePerPodCMExternal", 3, 8600, 2900, 3),
    ],
)
def test_hpa_external_per_pod_replica_calculator(
    name: str, current: int, usage: int, per_pod: int, expected: int
) -> None:
    """replica_calculator_test.go, the externalPerPodMetric cases (KEDA's AverageValue target)."""
    assert peers.hpa_external_per_pod_replicas(current, usage, per_pod) == expected, name


def test_hpa_starts_with_its_initial_recommendation() -> None:
    """horizontal.go recordInitialRecommendation: a new HPA seeds its history with the current
    replicas, so idle pods are kept for the 300 s scale-down window."""
    behavior = peers.HPABehavior(1, 10)
    assert behavior.normalize(0, 4, 1) == 4
    assert behavior.normalize(285, 4, 1) == 4
    assert behavior.normalize(315, 4, 1) == 1


def test_hpa_default_scale_up_limit() -> None:
    """The default scaleUp policies: 100% or 4 pods per 15 s, whichever is more."""
    assert peers.HPABehavior(1, 100).normalize(0, 1, 50) == 5
    assert peers.HPABehavior(1, 100).normalize(0, 10, 50) == 20


# ------------------------------------------------------------------------------------------- KPA


def kpa(target: float, ready: int = 1, **kwargs: float) -> peers.KPADecider:
    return peers.KPADecider(target=target, **kwargs)


def test_kpa_stable_mode_increase() -> None:
    """knative pkg/autoscaler/scaling/autoscaler_test.go TestAutoscalerStableModeIncreaseWithConcurrency
    Default: target 10, stable 50 -> 5, then 100 -> 10."""
    a = kpa(10)
    assert a.scale(0, 1, 50, 10) == 5
    assert a.scale(1, 1, 100, 10) == 10


def test_kpa_stable_mode_decrease() -> None:
    """autoscaler_test.go TestAutoscalerStableModeDecrease: 8 ready, 100 -> 10, then 50 -> 5."""
    a = kpa(10)
    assert a.scale(0, 8, 100, 100) == 10
    assert a.scale(1, 8, 50, 50) == 5


def test_kpa_unpanics_after_a_slow_increase() -> None:
    """autoscaler_test.go TestAutoscalerUnpanicAfterSlowIncrease."""
    a = kpa(1)
    assert a.scale(0, 10, 11, 25) == 25
    assert a.panic_since == 0
    assert a.scale(30, 40, 30, 41) == 41
    assert a.panic_since == 0, "41 < 2 x 40: the panic window did not move"
    assert a.scale(62, 55, 50, 56) == 50, "no longer in panic"
    assert a.panic_since is None


def test_kpa_extends_the_panic_window() -> None:
    """autoscaler_test.go TestAutoscalerExtendPanicWindow."""
    a = kpa(1)
    assert a.scale(0, 10, 11, 25) == 25
    assert a.scale(30, 40, 30, 80) == 80
    assert a.panic_since == 30


@pytest.mark.parametrize(
    ("label", "target", "stable", "panic", "ready", "prep", "want"),
    [
        ("AutoscalerStableModeNoChange", 10, 50, 50, 1, {}, 5),
        ("AutoscalerPanicStableLargerThanPanic", 1, 50, 30, 5, {"panic_since": -5, "max_panic_pods": 5}, 50),
        ("AutoscalerPanicStableLessThanPanic", 1, 20, 30, 5, {"panic_since": -5, "max_panic_pods": 5}, 30),
        ("AutoscalerStableModeNoChangeAlreadyScaled", 10, 50, 50, 5, {}, 5),
        ("AutoscalerStableModeIncreaseWithSmallScaleUpRate", 1, 3, 3.1, 2, {"max_scale_up_rate": 1.1}, 3),
        ("AutoscalerStableModeDecreaseWithSmallScaleDownRate", 10, 1, 1, 100,
         {"max_scale_down_rate": 1.1}, 90),
        ("AutoscalerPanicModeDoublePodCount", 10, 50, 100, 1, {}, 10),
    ],
)  # fmt: skip
def test_kpa_scale_table(
    label: str, target: float, stable: float, panic: float, ready: int, prep: dict[str, float], want: int
) -> None:
    """autoscaler_test.go TestAutoscalerScale (the cases without scale-to-zero or activator sizing)."""
    a = kpa(target)
    for key, value in prep.items():
        setattr(a, key, value)
    assert a.scale(0, ready, stable, panic) == want, label


def test_kpa_starts_in_panic_with_its_ready_pods_as_the_floor() -> None:
    """autoscaler.go newAutoscaler ("We always start in the panic mode, if the deployment is scaled up
    over 1 pod"), TestAutoscalerStartMetrics: no scale-down until the windows have data."""
    a = peers.KPADecider.starting(4, 0.0, target=10)
    assert a.panic_since == 0.0
    assert a.scale(2, 4, 5, 5) == 4, "idle, but held at the ready count while panicking"
    assert a.scale(61, 4, 5, 5) == 2, "panic over after the stable window: at most half per tick"
    assert peers.KPADecider.starting(1, 0.0, target=10).panic_since is None


def test_kpa_scale_down_delay_holds_the_highest_of_the_window() -> None:
    """autoscaler.go: with ScaleDownDelay, the highest decision within the delay window wins."""
    a = kpa(10, scale_down_delay=30)
    assert a.scale(0, 10, 100, 100) == 10
    assert a.scale(20, 10, 10, 10) == 10, "5 wanted, 10 within the last 30 s"
    assert a.scale(41, 10, 10, 10) == 5


# ------------------------------------------------------------------------------------------- APA


@pytest.mark.parametrize(
    ("name", "current", "use", "up_rate", "down_rate", "expected"),
    [
        ("basic_scale_up", 2, 45, 2, 2, 3),
        ("scale_up_upto_ceiling", 2, 35, 2, 2, 3),
        ("scale_up_upto_max_scale_up", 2, 90, 2, 2, 4),
        ("scale_up_upto_max_scale_up_ceiling", 2, 90, 2.5, 2, 5),
        ("basic_scale_down", 6, 20, 2, 2, 4),
        ("scale_down_upto_ceiling", 6, 18, 2, 2, 4),
        ("scale_down_upto_max_scale_down", 6, 10, 2, 2, 3),
        ("scale_down_upto_max_scale_down_floor", 6, 5, 2, 2.5, 2),
        ("no_scaling_as_within_up_tolerance", 2, 33, 2, 2, 2),
        ("no_scaling_as_within_down_tolerance", 2, 27, 2, 2, 2),
    ],
)
def test_apa_compute_target_replicas(
    name: str, current: int, use: float, up_rate: float, down_rate: float, expected: int
) -> None:
    """aibrix pkg/controller/podautoscaler/algorithm/apa_test.go TestAPAAlgorithm_ComputeTargetReplicas
    (target 30, tolerances 0.1)."""
    got = peers.apa_replicas(current, use, 30.0, 0.1, 0.1, up_rate, down_rate)
    assert got == expected, name


def test_apa_cooldown_windows() -> None:
    """aibrix pkg/controller/podautoscaler/podautoscaler_controller.go stabilizeRecommendation: growth at
    once (no scale-up window), shrinking to the lowest recommendation of the 300 s window."""
    s = peers.APAStabilizer()
    assert s.stabilize(0, 2, 4) == 4
    assert s.stabilize(10, 4, 3) == 3
    assert s.stabilize(20, 3, 2) == 2
    assert s.stabilize(30, 2, 2) == 2
    assert s.stabilize(40, 2, 3) == 3
