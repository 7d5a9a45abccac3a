"""Scale to zero behind the router: when a service sleeps and when it wakes (the pure rule, then
decide() over ticks of a fake clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qwen_operator import api, idle
from qwen_operator.idle import RouterSample
from qwen_operator.scaling import Observation, PodSample, Reason, State, decide, state_from_status
from qwen_operator.status import SCALED_TO_ZERO, scaling_status
from qwen_operator.validation import InvalidSpec, parse

T0 = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)
HOUR = 3600.0


def test_a_gap_too_short_to_matter_never_sleeps() -> None:
    assert not idle.may_sleep(30, [HOUR] * 10, cold_start=10).ok


def test_without_history_it_sleeps_after_idling_as_long_as_a_cold_start() -> None:
    """Ski rental's break-even: keep the replica as long as a cold start would cost, then let go."""
    assert not idle.may_sleep(200, [], cold_start=240).ok
    sleep = idle.may_sleep(240, [], cold_start=240)
    assert sleep.ok
    assert "too few past gaps" in sleep.message


def test_a_service_whose_pauses_are_long_sleeps_soon_and_says_for_how_long() -> None:
    sleep = idle.may_sleep(60, [HOUR] * 5, cold_start=240)
    assert sleep.ok
    assert sleep.expected_idle_seconds == pytest.approx(HOUR - 60)
    assert "half lasted" in sleep.message


def test_a_service_whose_pauses_are_mostly_short_sleeps_only_after_outlasting_them() -> None:
    """Nine pauses of 90 s for every three of two hours: after 60 s idle, half of such gaps end within
    30 s more (stay up); after 100 s, this one is one of the long ones (sleep)."""
    gaps = [90.0] * 9 + [2 * HOUR] * 3
    assert not idle.may_sleep(60, gaps, cold_start=240).ok
    assert idle.may_sleep(100, gaps, cold_start=240).ok


def test_pauses_shorter_than_a_cold_start_keep_the_replica() -> None:
    gaps = [300.0] * 10  # every pause ends 5 minutes in; a cold start takes 6
    assert not idle.may_sleep(60, gaps, cold_start=360).ok
    assert not idle.may_sleep(299, gaps, cold_start=360).ok
    assert idle.may_sleep(360, gaps, cold_start=360).ok, "longer than any pause seen: break-even again"


def test_the_user_s_fixed_idle_time_replaces_the_rule() -> None:
    assert idle.may_sleep(5, [], cold_start=240, fixed=5).ok
    assert not idle.may_sleep(4, [HOUR] * 10, cold_start=1, fixed=5).ok


def test_gaps_are_remembered_when_traffic_comes_back_and_a_reset_counter_is_traffic() -> None:
    st = idle.track(idle.IdleState(), RouterSample(arrivals=10), 0, T0, first=True)
    assert st.last_request == T0
    quiet = idle.track(st, RouterSample(arrivals=10), 0, T0 + timedelta(seconds=400), first=False)
    assert quiet.last_request == T0, "no request: idleness goes on"
    back = idle.track(quiet, RouterSample(arrivals=11), 0, T0 + timedelta(seconds=500), first=False)
    assert back.gaps == (500.0,)
    assert back.last_request == T0 + timedelta(seconds=500)
    busy = idle.track(back, RouterSample(arrivals=11), 2, T0 + timedelta(seconds=515), first=False)
    assert busy.gaps == (500.0,), "15 s between requests is no gap"
    reset = idle.track(busy, RouterSample(arrivals=3), 0, T0 + timedelta(seconds=600), first=False)
    assert reset.gaps == (500.0, 85.0), "a router restarted and counted 3 new requests"
    unread = idle.track(reset, RouterSample(error="down"), 0, T0 + timedelta(seconds=700), first=False)
    assert unread == reset, "an unreadable router changes nothing"
    restarted = idle.track(reset, RouterSample(arrivals=3), 0, T0 + timedelta(seconds=900), first=True)
    assert restarted.last_request == T0 + timedelta(seconds=900), "after a restart idleness counts afresh"


# ------------------------------------------------------------------------------- decide() with a router


def spec(**overrides: Any) -> api.AutoscalingSpec:
    base: dict[str, Any] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 4,
        "targets": {"concurrencyPerReplica": 8},
        "evaluationIntervalSeconds": 15,
        "scaleDown": {"stabilizationWindowSeconds": 60, "cooldownAfterScaleUpSeconds": 60},
    }
    base.update(overrides)
    return api.AutoscalingSpec.model_validate(base)


def seen(replicas: int, running: float = 0, router: RouterSample | None = None) -> Observation:
    names = tuple(f"p{i}" for i in range(replicas))
    each = running / max(replicas, 1)
    samples = {n: PodSample(each, 0, each / 40, 1) for n in names}  # an idle pod's KV cache is empty
    return Observation(
        replicas=replicas,
        ready_pods=names,
        samples=samples,
        cold_starts=(120.0,) * replicas,
        router=RouterSample(arrivals=5) if router is None else router,
    )


def run(
    s: api.AutoscalingSpec, ticks: int, replicas: int = 1, state: State | None = None, **kw: Any
) -> tuple[list[tuple[int, Reason]], State, Any]:
    """Evaluate every 15 s on an idle router, following each decision; returns what was decided."""
    state = state or State()
    out, now, decision = [], T0, None
    for _ in range(ticks):
        decision = decide(seen(replicas, **kw), s, state, now)
        out.append((decision.replicas, decision.reason))
        state, replicas, now = decision.state, decision.replicas, now + timedelta(seconds=15)
    return out, state, decision


@pytest.mark.parametrize("slo", [None, {"timeToFirstTokenSeconds": 2}], ids=["targets", "slo"])
def test_an_idle_service_keeps_one_replica_for_a_cold_start_then_goes_to_zero(slo: Any) -> None:
    s = spec() if slo is None else spec(slo=slo)
    decided, _, last = run(s, ticks=12)
    first_zero = next(i for i, (r, _) in enumerate(decided) if r == 0)
    assert first_zero * 15 >= 120, "slept sooner than a 120 s cold start's worth of idleness"
    assert all(r == 1 for r, _ in decided[:first_zero])
    assert Reason.AWAITING_IDLE in {why for _, why in decided[:first_zero]}
    assert decided[first_zero][1] == Reason.SCALED_TO_ZERO
    assert all(r == 0 for r, _ in decided[first_zero:]), "it stays at zero while nothing comes"
    assert last.reason == Reason.SCALED_TO_ZERO


def test_a_request_held_at_zero_wakes_a_replica_in_one_evaluation() -> None:
    _, state, _ = run(spec(), ticks=12)
    now = T0 + timedelta(seconds=12 * 15)
    held = replace(seen(0), router=RouterSample(waiting=1, arrivals=6))
    decision = decide(held, spec(), state, now)
    assert (decision.replicas, decision.reason) == (1, Reason.WAKE)
    assert "1 request(s) held at the router" in decision.message
    many = replace(seen(0), router=RouterSample(waiting=20, arrivals=25))
    assert decide(many, spec(), state, now).replicas == 3, "20 held at 8 per replica"
    arrived = replace(seen(0), router=RouterSample(arrivals=6))
    assert decide(arrived, spec(), state, now).replicas == 1, "one came and went (it timed out): wake"
    restarted = replace(state, last_evaluated=None)  # the status's counter may be older than the router's
    assert decide(arrived, spec(), restarted, now).replicas == 0, "no wake for a stale counter"
    assert decide(held, spec(), restarted, now).replicas == 1


def test_a_router_that_cannot_be_read_never_lets_the_service_sleep_and_wakes_it() -> None:
    down = RouterSample(error="cannot connect")
    decided, _, last = run(spec(), ticks=20, router=down)
    assert all(r == 1 for r, _ in decided)
    assert "the router cannot be read (cannot connect)" in last.message
    _, state, _ = run(spec(), ticks=12)
    woken = decide(replace(seen(0), router=down), spec(), state, T0 + timedelta(hours=1))
    assert (woken.replicas, woken.reason) == (1, Reason.WAKE)


def test_without_a_router_the_service_never_sleeps() -> None:
    s = spec()
    state, now = State(), T0
    for _ in range(40):
        obs = replace(seen(1), router=None)
        decision = decide(obs, s, state, now)
        assert decision.replicas == 1
        state, now = decision.state, now + timedelta(seconds=15)


def test_traffic_keeps_it_up_and_a_schedule_window_may_hold_it_awake() -> None:
    decided, _, _ = run(spec(), ticks=40, running=3)
    assert all(r >= 1 for r, _ in decided)
    office = {"timeZone": "UTC", "windows": [{"start": "08:00", "end": "18:00", "minReplicas": 1}]}
    decided, _, _ = run(spec(schedule=office), ticks=40)
    assert all(r == 1 for r, _ in decided), "the window's minReplicas 1 rules at 09:00"


def test_the_idle_state_survives_a_restart_through_the_status() -> None:
    """Gaps are kept in the status; idleness counts afresh after a restart (never asleep early)."""
    gaps = idle.IdleState(T0, 5.0, gaps=(400.0, 7200.0))
    _, _, decision = run(spec(), ticks=6, state=State(idle=gaps))
    status = scaling_status(api.QwenServiceStatus(), decision, T0.isoformat(), 1, can_sleep=True)
    back = state_from_status(status)
    assert back.idle.gaps == (400.0, 7200.0)
    assert back.idle.arrivals == 5.0
    (cond,) = [c for c in status.conditions if c.type == SCALED_TO_ZERO]
    assert (cond.status, cond.reason) == ("False", "AwaitingIdle")


def test_the_scaled_to_zero_condition_says_why_and_only_where_it_can_happen() -> None:
    _, _, asleep = run(spec(), ticks=12)
    status = scaling_status(api.QwenServiceStatus(), asleep, T0.isoformat(), 1, can_sleep=True)
    (cond,) = [c for c in status.conditions if c.type == SCALED_TO_ZERO]
    assert (cond.status, cond.reason) == ("True", "Idle")
    assert "the router holds the next request" in cond.message
    assert "too few past gaps this long to expect the next" in cond.message
    (active,) = [c for c in status.conditions if c.type == "ScalingActive"]
    assert (active.status, active.reason) == ("True", "ScaledToZero"), "asleep is no metrics failure"
    plain = scaling_status(status, asleep, T0.isoformat(), 1, can_sleep=False)
    assert SCALED_TO_ZERO not in [c.type for c in plain.conditions]


def _body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "metadata": {"name": "qwen", "namespace": "ml"},
        "spec": {"model": {"name": "Qwen/Qwen2.5-7B-Instruct"}, **spec},
    }


def test_zero_replicas_need_the_router_and_the_crd_says_so_too() -> None:
    zero = {"enabled": True, "minReplicas": 0}
    with pytest.raises(InvalidSpec, match=r"minReplicas 0 \(scale to zero\) needs routing\.mode Builtin"):
        parse(_body(autoscaling=zero))
    night = {"enabled": True, "schedule": {"windows": [{"start": "22:00", "end": "06:00", "minReplicas": 0}]}}
    with pytest.raises(InvalidSpec, match=r"needs routing\.mode Builtin"):
        parse(_body(autoscaling=night))
    svc = parse(_body(autoscaling=zero, routing={"mode": "Builtin"}))
    assert svc.spec.scales_to_zero
    assert not parse(_body(autoscaling={"enabled": True})).spec.scales_to_zero
    rules = api.QwenServiceSpec.model_json_schema()["x-kubernetes-validations"]
    assert any(r["message"] == api.SCALE_TO_ZERO_NEEDS_ROUTER for r in rules)


def test_at_zero_the_message_says_when_the_next_request_is_expected() -> None:
    """With past gaps as long as this one, the status names the expected wake time: an hour-long
    gap history, idle for 10 minutes at 09:10 -> about 10:00."""
    state = State(idle=idle.IdleState(T0, 5.0, gaps=(HOUR, HOUR, HOUR, 2 * HOUR)), last_evaluated=T0)
    now = T0 + timedelta(minutes=10)
    decision = decide(replace(seen(0), router=RouterSample(arrivals=5)), spec(), state, now)
    assert decision.reason == Reason.SCALED_TO_ZERO
    assert "the next expected around 2026-12-07 10:00 UTC" in decision.message
