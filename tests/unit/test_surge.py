"""The router's fresh figures as scale-up signals: a surge of arrivals above the pods' minute (with
this service's own burstiness), and the requests in flight as the router counts them now."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import pytest

from qwen_operator import idle, scaling, surge
from qwen_operator.idle import IdleState, RouterSample
from tests.unit.test_planner import T0, WARM, obs, slo_spec, traffic

RATE = 2.53  # requests/s that three pods carrying traffic(0.3) served over their minute


def reading(counter: float, seconds: float = 15.0) -> IdleState:
    return IdleState(T0, counter, T0 - timedelta(seconds=seconds))


def test_a_count_within_chance_of_the_minute_is_no_surge_and_a_fourfold_one_is() -> None:
    expected = 3 * RATE * 15  # three pods' minute rate over 15 s: 114 requests
    calm, _ = surge.of(RouterSample(arrivals=1000 + expected + 20, routers=2), reading(1000), T0, 3 * RATE)
    assert calm is None, "+20 on 114 is under 3 standard deviations"
    burst, _ = surge.of(RouterSample(arrivals=1000 + 4 * expected, routers=2), reading(1000), T0, 3 * RATE)
    assert burst is not None
    assert burst.factor == pytest.approx(4.0)
    assert burst.rate == pytest.approx(4 * 3 * RATE)


def test_a_bursty_services_own_swings_raise_the_bar() -> None:
    rng = random.Random(1)
    state, counter = IdleState(), 0.0
    for i in range(60):  # counts of mean 100 with a standard deviation of 40: dispersion 16
        now = T0 + timedelta(seconds=15 * i)
        counter += max(0.0, rng.gauss(100, 40))
        if state.arrivals_at is not None:
            _, dispersion = surge.of(RouterSample(arrivals=counter, routers=1), state, now, 100 / 15)
            state = replace(state, dispersion=dispersion)
        state = replace(state, arrivals=counter, arrivals_at=now)
    assert 6 < state.dispersion < 30
    now = state.arrivals_at + timedelta(seconds=15)  # type: ignore[operator]
    swing = RouterSample(arrivals=state.arrivals + 160, routers=1)  # type: ignore[operator]
    assert surge.of(swing, state, now, 100 / 15)[0] is None, "+60 is chance for this service"
    assert surge.of(swing, replace(state, dispersion=1.0), now, 100 / 15)[0] is not None, "not for Poisson"


def test_no_surge_without_a_reading_to_compare_with_or_from_a_counter_that_went_back() -> None:
    fresh = RouterSample(arrivals=5000, routers=1)
    assert surge.of(fresh, IdleState(), T0, RATE)[0] is None, "the first evaluation, or after a restart"
    assert surge.of(RouterSample(arrivals=3, routers=1), reading(1000), T0, RATE)[0] is None
    assert surge.of(RouterSample(error="timeout"), reading(1000), T0, RATE)[0] is None
    assert surge.of(None, reading(1000), T0, RATE)[0] is None


def test_slo_mode_plans_for_the_routers_rate_and_says_so() -> None:
    spec, per_pod = slo_spec(), traffic(0.3)
    before = replace(WARM, idle=reading(1000))
    steady = RouterSample(in_flight=6, arrivals=1000 + RATE * 15, routers=2)
    surging = replace(steady, arrivals=1000 + 4 * RATE * 15)
    # Caches nearly empty: the KV caches do not hold the calm fleet's size up (test_planner's do).
    calm = scaling.decide(replace(obs(3, per_pod, kv=0.05), router=steady), spec, before, T0)
    burst = scaling.decide(replace(obs(3, per_pod, kv=0.05), router=surging), spec, before, T0)
    assert "router counts" not in calm.message
    assert burst.recommendation is not None
    assert calm.recommendation is not None
    assert burst.recommendation >= calm.recommendation + 2, (calm.message, burst.message)
    assert "the router counts 10.1 requests/s over the last 15 s, 4x the window's rate" in burst.message
    assert burst.state.plan.capacity_scale == calm.state.plan.capacity_scale, "a surge teaches nothing"


def test_the_concurrency_target_counts_the_requests_in_flight_as_the_router_sees_them_now() -> None:
    spec = slo_spec(slo=None, targets={"concurrencyPerReplica": 8})
    pods = obs(2, None, running=4)  # 8 in flight at the last scrape: one replica's worth
    assert scaling.decide(pods, spec, WARM, T0).recommendation == 1
    busy = RouterSample(in_flight=30, waiting=2, routers=2)
    now = scaling.decide(replace(pods, router=busy), spec, WARM, T0)
    assert now.recommendation == 4
    assert now.message.startswith("concurrency 32 (as the router counts it now) vs target 8 x 2 ready")
    lower = scaling.decide(replace(pods, router=RouterSample(in_flight=3, routers=2)), spec, WARM, T0)
    assert lower.recommendation == 1, "the pods' own count stands when the router's is lower"
    unread = scaling.decide(replace(pods, router=RouterSample(error="timeout")), spec, WARM, T0)
    assert unread.recommendation == 1


def test_a_restart_forgets_the_reading_so_no_surge_is_read_across_it() -> None:
    kept = scaling.state_from_status(scaling_status_with(router_arrivals=1000))
    assert kept.idle.arrivals == 1000
    assert kept.idle.arrivals_at is None
    assert idle.IdleState().dispersion == 1.0


def scaling_status_with(**state: object):  # type: ignore[no-untyped-def]
    from qwen_operator import api

    return api.QwenServiceStatus(autoscaling=api.AutoscalingStatus(state=api.ScalerState(**state)))
