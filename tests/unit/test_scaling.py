"""The scaling decision: every stage and reason, table-driven, then multi-tick scenarios on a fake clock."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_operator import api, gpu_targets
from qwen_operator.scaling import (
    Decision,
    Observation,
    PodSample,
    Reason,
    State,
    decide,
    deletion_costs,
    record,
    state_from_status,
    window_max,
)
from qwen_operator.status import scaling_status

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def spec(**overrides: Any) -> api.AutoscalingSpec:
    base: dict[str, Any] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 10,
        "targets": {"concurrencyPerReplica": 8},
    }
    base.update(overrides)
    return api.AutoscalingSpec.model_validate(base)


def pods(*loads: float | tuple[float, float, float | None], age: float = 2) -> dict[str, PodSample]:
    """Samples for pods p0, p1, ...: a number is running requests; a tuple is (running, waiting, kv)."""
    out = {}
    for i, load in enumerate(loads):
        running, waiting, kv = load if isinstance(load, tuple) else (load, 0.0, 0.1)
        out[f"p{i}"] = PodSample(running, waiting, kv, age)
    return out


def observe(replicas: int, samples: dict[str, PodSample], ready: int | None = None, **kw: Any) -> Observation:
    names = tuple(f"p{i}" for i in range(ready if ready is not None else len(samples)))
    return Observation(replicas=replicas, ready_pods=names, samples=samples, **kw)


def warm(seconds: float = 3600) -> State:
    """A state with a long unbroken run of data and no recent scale-up."""
    return State(data_since=T0 - timedelta(seconds=seconds), last_evaluated=T0 - timedelta(seconds=15))


# ---------------------------------------------------------------------------------- one decision


@pytest.mark.parametrize(
    ("name", "obs", "overrides", "state", "replicas", "reason"),
    [
        # stage 1: per-signal recommendation and tolerance
        ("at target", observe(2, pods(8, 8)), {}, warm(), 2, Reason.AT_TARGET),
        ("inside tolerance up", observe(2, pods(8, 9)), {}, warm(), 2, Reason.AT_TARGET),
        ("just over tolerance", observe(2, pods(9, 9)), {}, warm(), 3, Reason.ABOVE_TARGET),
        ("waiting counts as load", observe(1, pods((8, 8, 0.1))), {}, warm(), 2, Reason.ABOVE_TARGET),
        ("KV cache wins", observe(2, pods((2, 0, 0.95), (2, 0, 0.95))), {}, warm(), 3, Reason.ABOVE_TARGET),
        # long prompts: two running fill the cache, two more wait for room (1.8 used + 1.8 waiting: 4.5 x 0.8)
        (
            "requests waiting for cache count",
            observe(2, pods((2, 2, 0.9), (2, 2, 0.9))),
            {},
            warm(),
            5,
            Reason.ABOVE_TARGET,
        ),
        # requests that wait while the cache has room wait for the batch limits, not for the cache
        (
            "waiting with room in the cache is not the cache's",
            observe(2, pods((4, 6, 0.5), (4, 6, 0.5))),
            {"targets": {"concurrencyPerReplica": 16}},
            warm(),
            2,
            Reason.AT_TARGET,
        ),
        (
            "waiting target when set",
            observe(2, pods((4, 6, 0.1), (4, 6, 0.1))),
            {"targets": {"concurrencyPerReplica": 16, "waitingPerReplica": 2}},
            warm(),
            6,
            Reason.ABOVE_TARGET,
        ),
        ("below target", observe(3, pods(2, 2, 2)), {}, warm(), 2, Reason.SCALE_DOWN_LIMITED),
        ("below target in one step", observe(3, pods(5, 5, 5)), {}, warm(), 2, Reason.BELOW_TARGET),
        # stage 2: cold start
        ("starting pods absorb it", observe(4, pods(14, 14), ready=2), {}, warm(), 4, Reason.COLD_START),
        ("burst beyond starting pods", observe(4, pods(24, 24), ready=2), {}, warm(), 6, Reason.ABOVE_TARGET),
        # stage 3: scale-up rate limit and panic
        ("step: +4 beats double of 1", observe(1, pods(15)), {}, warm(), 2, Reason.ABOVE_TARGET),
        (
            "step limited to double",
            observe(6, pods(14, 14, 14, 14, 14, 14)),
            {"scaleUp": {"panicThreshold": 3}, "maxReplicas": 20},
            warm(),
            11,
            Reason.ABOVE_TARGET,
        ),
        (
            "step limited to the larger of double and +1",
            observe(1, pods(30)),
            {"scaleUp": {"maxStepReplicas": 1, "maxStepPercent": 100, "panicThreshold": 10}},
            warm(),
            2,
            Reason.SCALE_UP_LIMITED,
        ),
        (
            "panic skips the step limit",
            observe(2, pods(40, 40)),
            {"scaleUp": {"maxStepReplicas": 1, "maxStepPercent": 10}},
            warm(),
            10,
            Reason.PANIC,
        ),
        (
            "no panic below the threshold",
            observe(2, pods(15, 15)),
            {"scaleUp": {"maxStepReplicas": 1, "maxStepPercent": 10}},
            warm(),
            3,
            Reason.SCALE_UP_LIMITED,
        ),
        # stage 4: scale-down guards
        ("no full window yet", observe(3, pods(0, 0, 0)), {}, warm(100), 3, Reason.AWAITING_FULL_WINDOW),
        (
            "cooldown after scale-up",
            observe(3, pods(0, 0, 0)),
            {},
            replace(warm(), last_scale_up_time=T0 - timedelta(seconds=60)),
            3,
            Reason.SCALE_DOWN_COOLDOWN,
        ),
        (
            "window remembers a peak",
            observe(3, pods(0, 0, 0)),
            {},
            replace(warm(), history=((T0 - timedelta(seconds=200), 3), (T0 - timedelta(seconds=100), 0))),
            3,
            Reason.SCALE_DOWN_STABILIZED,
        ),
        (
            "window max below current",
            observe(4, pods(0, 0, 0, 0)),
            {"scaleDown": {"maxStepReplicas": 4}},
            replace(warm(), history=((T0 - timedelta(seconds=500), 4), (T0 - timedelta(seconds=400), 2))),
            2,
            Reason.BELOW_TARGET,
        ),
        (
            "window of zero scales down at once",
            observe(4, pods(0, 0, 0, 0)),
            {"scaleDown": {"stabilizationWindowSeconds": 0, "maxStepReplicas": 10}},
            warm(1),
            1,
            Reason.BELOW_TARGET,
        ),
        # stage 5: bounds
        (
            "capped at max",
            observe(8, pods(*[40] * 8)),
            {"maxReplicas": 10},
            warm(),
            10,
            Reason.TOO_MANY_REPLICAS,
        ),
        (
            "held at min",
            observe(1, pods((0, 0, None))),
            {"minReplicas": 1},
            warm(),
            1,
            Reason.TOO_FEW_REPLICAS,
        ),
        ("raised to a new min", observe(1, pods(8)), {"minReplicas": 3}, warm(), 3, Reason.TOO_FEW_REPLICAS),
        (
            "lowered to a new max",
            observe(6, pods(*[8] * 6)),
            {"minReplicas": 1, "maxReplicas": 4},
            warm(),
            4,
            Reason.TOO_MANY_REPLICAS,
        ),
        # stage 6: no data
        ("no ready pods", observe(2, {}, ready=0), {}, warm(), 2, Reason.METRICS_UNAVAILABLE),
        ("no samples", observe(2, {}, ready=2), {}, warm(), 2, Reason.METRICS_UNAVAILABLE),
        ("stale samples", observe(3, pods(0, 0, 0, age=120)), {}, warm(), 3, Reason.METRICS_UNAVAILABLE),
        ("NaN", observe(3, pods(math.nan, math.nan, math.nan)), {}, warm(), 3, Reason.METRICS_UNAVAILABLE),
        ("Inf", observe(3, pods(math.inf, 0, 0)), {}, warm(), 2, Reason.BELOW_TARGET),
        (
            "source failed",
            observe(3, {}, ready=3, error="Prometheus unreachable"),
            {},
            warm(),
            3,
            Reason.METRICS_UNAVAILABLE,
        ),
        (
            "no data still obeys a new max",
            observe(6, {}, ready=6),
            {"maxReplicas": 4},
            warm(),
            4,
            Reason.TOO_MANY_REPLICAS,
        ),
        # partial data: a silent pod never causes a scale-down
        ("silent pod held at target", observe(2, pods(0), ready=2), {}, warm(), 2, Reason.AT_TARGET),
        ("silent pod, others busy", observe(2, pods(30), ready=2), {}, warm(), 4, Reason.ABOVE_TARGET),
        # samples from pods that are not ready are ignored
        ("unready pod's sample ignored", observe(1, pods(4, 40), ready=1), {}, warm(), 1, Reason.AT_TARGET),
    ],
)
def test_decide(
    name: str, obs: Observation, overrides: dict[str, Any], state: State, replicas: int, reason: Reason
) -> None:
    decision = decide(obs, spec(**overrides), state, T0)
    assert (decision.replicas, decision.reason) == (replicas, reason), decision.message


def test_inf_on_one_pod_treats_it_as_silent() -> None:
    # The "Inf" row above: p0 is unusable, so it counts as one replica at target on the way down.
    decision = decide(observe(3, pods(math.inf, 0, 0)), spec(), warm(), T0)
    assert decision.observation is not None
    assert decision.observation.pods_with_data == 2
    assert "1 ready pod(s) without data: p0" in decision.message


def test_messages_name_the_signal_the_target_and_the_ready_pods() -> None:
    decision = decide(observe(2, pods((18, 19, 0.3), (0, 0, 0.1))), spec(), warm(), T0)
    assert decision.replicas == 5
    assert decision.message.startswith("concurrency 37 vs target 8 x 2 ready")
    assert decision.observation == api.ScalingObservation(
        ready_replicas=2,
        pods_with_data=2,
        concurrency=37,
        waiting=19,
        load_per_replica=18.5,
        kv_cache_usage=0.2,
    )


def test_a_full_cache_with_a_queue_says_the_waiting_requests_are_counted() -> None:
    decision = decide(observe(2, pods((2, 2, 0.9), (2, 2, 0.9))), spec(), warm(), T0)
    assert decision.message.startswith(
        "KV-cache usage 3.6 (1.8 used + 1.8 for requests waiting for room) vs target 0.8 x 2 ready"
    )
    assert decision.observation is not None
    assert decision.observation.kv_cache_usage == 0.9


def test_no_data_says_why_and_breaks_the_data_run() -> None:
    decision = decide(observe(3, {}, ready=3, error="Prometheus at http://x unreachable"), spec(), warm(), T0)
    assert decision.message == "holding 3 replicas: Prometheus at http://x unreachable"
    assert not decision.metrics_available
    assert decision.state.data_since is None


def test_scale_times_are_stamped_only_on_a_move() -> None:
    up = decide(observe(1, pods(20)), spec(), warm(), T0)
    assert up.state.last_scale_time == up.state.last_scale_up_time == T0
    hold = decide(observe(2, pods(8, 8)), spec(), warm(), T0)
    assert hold.state.last_scale_time is None


def test_a_restart_is_a_gap_so_scale_down_waits_a_full_window() -> None:
    persisted = replace(warm(), last_evaluated=None)  # what status gives back after a restart
    first = decide(observe(3, pods(0, 0, 0)), spec(), persisted, T0)
    assert (first.replicas, first.reason) == (3, Reason.AWAITING_FULL_WINDOW)
    assert first.state.data_since == T0


def test_a_long_pause_between_evaluations_is_a_gap_too() -> None:
    state = replace(warm(), last_evaluated=T0 - timedelta(seconds=600))
    assert decide(observe(3, pods(0, 0, 0)), spec(), state, T0).reason is Reason.AWAITING_FULL_WINDOW


# ---------------------------------------------------------------------------------- the window


def test_history_keeps_runs_and_drops_what_left_the_window() -> None:
    h: tuple[tuple[datetime, int], ...] = ()
    for t, r in [(0, 2), (15, 2), (30, 5), (45, 5), (60, 3), (400, 1)]:
        h = record(h, T0 + timedelta(seconds=t), r, 300)
    # The 2-run and 5-run ended before 400 - 300 = 100; the 3-run lasted until 400.
    assert [r for _, r in h] == [3, 1]
    assert window_max(h, T0 + timedelta(seconds=400), 300) == 3
    assert window_max(h, T0 + timedelta(seconds=701), 300) == 1


def test_a_window_of_zero_does_not_stabilize() -> None:
    state = replace(warm(), history=((T0 - timedelta(seconds=15), 6),))
    zero = spec(
        scaleDown={"stabilizationWindowSeconds": 0, "cooldownAfterScaleUpSeconds": 0, "maxStepReplicas": 10}
    )
    decision = decide(observe(6, pods(3, 3, 3, 3, 3, 3)), zero, state, T0)
    assert (decision.replicas, decision.reason) == (3, Reason.BELOW_TARGET), decision.message


def test_a_long_window_of_alternating_recommendations_keeps_its_peak() -> None:
    # A 3,600 s window at 5 s evaluations: 720 runs when the recommendation alternates; the peak of 9
    # came first and must hold the whole window.
    h: tuple[tuple[datetime, int], ...] = ()
    for i in range(700):
        h = record(h, T0 + timedelta(seconds=5 * i), 9 if i == 0 else 2 + i % 2, 3600)
    assert len(h) <= 256, "bounded: it is persisted in the status"
    assert window_max(h, T0 + timedelta(seconds=3499), 3600) == 9
    assert window_max(h, T0 + timedelta(seconds=3605), 3600) == 3


def test_a_ready_pod_without_data_is_not_the_first_to_go() -> None:
    obs = observe(3, pods(2, 10), ready=3)  # p2 is ready and silent (maybe overloaded)
    costs = deletion_costs(obs)
    assert costs["p0"] < costs["p1"] == costs["p2"]


def test_status_round_trip_keeps_the_state_but_not_the_last_evaluation() -> None:
    decision = decide(observe(1, pods(30)), spec(), warm(), T0)
    status = scaling_status(api.QwenServiceStatus(), decision, "2026-11-21T12:00:00Z", 1)
    assert status.desired_replicas == decision.replicas == 4
    assert status.autoscaling is not None
    assert status.autoscaling.reason == "AboveTarget"
    assert state_from_status(status) == replace(decision.state, last_evaluated=None)
    # And through JSON, as the API server stores it.
    again = api.QwenServiceStatus.model_validate(status.model_dump(mode="json", by_alias=True))
    assert state_from_status(again) == state_from_status(status)


# ------------------------------------------------------------------------------- multi-tick runs


class Sim:
    """A tiny closed loop: the Deployment gets what decide asks for; pods become ready after a delay."""

    def __init__(self, autoscaling: api.AutoscalingSpec, start: int = 1, startup: float = 120) -> None:
        self.spec = autoscaling
        self.state = State()
        self.now = T0
        self.replicas = start
        self.ready_at: list[datetime] = [T0] * start
        self.startup = timedelta(seconds=startup)
        self.log: list[tuple[float, int, Reason]] = []

    def tick(self, concurrency: float, seconds: float = 15, report: bool = True) -> Decision:
        ready = sum(1 for t in self.ready_at if t <= self.now)
        each = concurrency / ready if ready else 0
        samples = pods(*[(each, 0.0, min(1.0, each / 40))] * ready) if report else {}
        obs = Observation(self.replicas, tuple(f"p{i}" for i in range(ready)), samples)
        d = decide(obs, self.spec, self.state, self.now)
        self.state = d.state
        if d.replicas > self.replicas:
            self.ready_at += [self.now + self.startup] * (d.replicas - self.replicas)
        self.ready_at = sorted(self.ready_at)[: d.replicas]
        self.replicas = d.replicas
        self.log.append(((self.now - T0).total_seconds(), d.replicas, d.reason))
        self.now += timedelta(seconds=seconds)
        return d

    def run(self, concurrency: float, seconds: float, **kw: Any) -> list[int]:
        return [self.tick(concurrency, **kw).replicas for _ in range(int(seconds // 15))]


def test_step_load_scales_up_holds_while_pods_start_then_steps_down_after_the_window() -> None:
    sim = Sim(spec(minReplicas=1, maxReplicas=8))
    assert set(sim.run(4, 300)) == {1}  # light load: stay at min
    burst = sim.run(40, 600)  # 5 replicas' worth
    assert burst[0] == 5, sim.log  # immediate: +4 beats doubling one replica
    assert set(burst) == {5}, "starting pods count as capacity; no second scale-up for the same load"
    quiet = sim.run(0, 900)
    first_down = quiet.index(4)
    assert first_down * 15 >= 300, "no scale-down inside the stabilization window"
    assert all(a - b <= 1 for a, b in itertools.pairwise(quiet)), "one replica per step"
    assert quiet[-1] == 1


def test_a_growing_burst_keeps_scaling_while_pods_start() -> None:
    sim = Sim(spec(minReplicas=1, maxReplicas=10), startup=300)
    sim.tick(20)
    assert sim.replicas == 3
    sim.tick(60)  # beyond what the 3 on the way absorb
    assert sim.replicas == 8


def test_flapping_load_does_not_flap_replicas() -> None:
    sim = Sim(spec(minReplicas=1, maxReplicas=8), start=3, startup=0)
    for i in range(80):
        sim.tick(24 if i % 2 else 12)  # alternating 3 and 1.5 replicas' worth
    changes = sum(1 for a, b in zip(sim.log, sim.log[1:], strict=False) if a[1] != b[1])
    assert changes == 0, sim.log


def test_outage_holds_and_scale_down_waits_a_full_window_after_it() -> None:
    sim = Sim(spec(minReplicas=1, maxReplicas=8), start=4, startup=0)
    sim.run(32, 600)
    assert sim.replicas == 4
    held = sim.run(0, 600, report=False)  # metrics gone: hold, never scale down
    assert set(held) == {4}
    assert sim.log[-1][2] is Reason.METRICS_UNAVAILABLE
    back = sim.run(0, 600)  # data back, idle
    assert back[: 300 // 15 - 1] == [4] * (300 // 15 - 1), sim.log
    assert back[-1] < 4


@settings(max_examples=300, deadline=None)
@given(
    replicas=st.integers(1, 20),
    loads=st.lists(
        st.tuples(
            st.floats(0, 500) | st.sampled_from([math.nan, math.inf, -1.0]),
            st.floats(0, 500),
            st.none() | st.floats(0, 1),
        ),
        max_size=20,
    ),
    ready=st.integers(0, 20),
    lo=st.integers(1, 10),
    span=st.integers(0, 10),
    age=st.floats(0, 200),
)
def test_fuzz_decisions_stay_in_bounds_and_never_drop_without_data(
    replicas: int,
    loads: list[tuple[float, float, float | None]],
    ready: int,
    lo: int,
    span: int,
    age: float,
) -> None:
    s = spec(minReplicas=lo, maxReplicas=lo + span)
    obs = observe(replicas, pods(*loads, age=age), ready=min(ready, len(loads)))
    d = decide(obs, s, warm(), T0)
    assert lo <= d.replicas <= lo + span
    if not d.metrics_available:
        assert d.replicas >= min(replicas, lo + span)
    assert d.message


# ------------------------------------------------------------------- the GPU-dependent default target


@pytest.mark.parametrize(
    ("product", "target"),
    [
        ("NVIDIA-A10G", 24),
        ("NVIDIA-L4", 32),
        ("NVIDIA-L40S", 24),  # not an L4: an untuned card gets the default
        ("NVIDIA-A100-SXM4-80GB", 48),
        ("NVIDIA-A100-80GB-PCIe", 48),
        ("NVIDIA-A100-SXM4-40GB", 24),
        ("NVIDIA-H100-80GB-HBM3", 24),
        (None, 24),
    ],
)
def test_the_default_concurrency_target_follows_the_gpu_the_pods_are_pinned_to(
    product: str | None, target: float
) -> None:
    body: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct"},
        "autoscaling": {"enabled": True, "maxReplicas": 10},
    }
    if product is not None:
        body["scheduling"] = {"nodeSelector": {gpu_targets.GPU_PRODUCT_LABEL: product}}
    auto = api.QwenServiceSpec.model_validate(body).scaling()
    assert auto.targets.concurrency_per_replica == target
    # 3 ready pods carrying 3 x target + 1 requests: at target, inside the tolerance.
    obs = observe(3, pods(target, target, target + 1))
    assert decide(obs, auto, warm(), T0).replicas == 3
    assert decide(observe(3, pods(target * 2, target * 2, target * 2)), auto, warm(), T0).replicas == 6


def test_a_target_set_in_the_spec_wins_over_the_gpu_default() -> None:
    body = {
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct"},
        "scheduling": {"nodeSelector": {gpu_targets.GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}},
        "autoscaling": {"enabled": True, "targets": {"concurrencyPerReplica": 10}},
    }
    assert api.QwenServiceSpec.model_validate(body).scaling().targets.concurrency_per_replica == 10
    assert api.ScalingTargets().concurrency() == 24, "decide() on an unfilled spec uses the default"


@pytest.mark.parametrize(
    ("engine", "target"),
    [
        ({}, 32),  # the L4's measured value
        ({"maxNumSeqs": 16}, 16),  # never above what the engine runs at once: the rest only queues
        ({"tensorParallelSize": 2}, 24),  # measured for one GPU per replica: the generic default
        ({"tensorParallelSize": 2, "maxNumSeqs": 8}, 8),
    ],
)
def test_the_gpu_default_respects_max_num_seqs_and_tensor_parallelism(
    engine: dict[str, int], target: float
) -> None:
    body = {
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct"},
        "engine": engine,
        "scheduling": {"nodeSelector": {gpu_targets.GPU_PRODUCT_LABEL: "NVIDIA-L4"}},
        "autoscaling": {"enabled": True},
    }
    assert api.QwenServiceSpec.model_validate(body).scaling().targets.concurrency_per_replica == target


def test_a_schedule_sets_the_bounds_by_local_time_of_day() -> None:
    """Office hours in Berlin keep three replicas warm on weekdays, and a night window caps the fleet
    from Friday evening into Saturday; outside them the spec's bounds hold. Times are local, daylight
    saving included."""
    office = {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "08:00", "end": "18:00", "minReplicas": 3}
    night = {"days": ["Fri"], "start": "22:00", "end": "06:00", "maxReplicas": 2}
    scheduled = spec(schedule={"timeZone": "Europe/Berlin", "windows": [office, night]})
    idle = observe(1, pods(1))
    monday_winter = datetime(2026, 11, 30, 7, 30, tzinfo=UTC)  # 08:30 in Berlin (CET)
    decision = decide(idle, scheduled, warm(), monday_winter)
    assert decision.replicas == 3
    assert decision.reason is Reason.TOO_FEW_REPLICAS
    assert decision.message.startswith(
        "at minReplicas 3 (schedule Mon,Tue,Wed,Thu,Fri 08:00-18:00 Europe/Berlin)"
    )
    assert decide(idle, scheduled, warm(), monday_winter - timedelta(hours=1)).replicas == 1, "07:30 local"
    monday_summer = datetime(2026, 7, 6, 6, 30, tzinfo=UTC)  # 08:30 in Berlin (CEST)
    assert decide(idle, scheduled, warm(), monday_summer).replicas == 3
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert decide(idle, scheduled, warm(), saturday).replicas == 1, "no window on Saturday noon"
    busy = observe(4, pods(40, 40, 40, 40))  # 160 in flight: 20 replicas' worth
    saturday_night = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)  # 03:00 Saturday, from Friday's window
    capped = decide(busy, scheduled, warm(), saturday_night)
    assert (capped.replicas, capped.reason) == (2, Reason.TOO_MANY_REPLICAS)
    assert "(schedule Fri 22:00-06:00 Europe/Berlin)" in capped.message
    assert decide(busy, scheduled, warm(), saturday_night + timedelta(days=1)).replicas == 10, "Sunday 03:00"
