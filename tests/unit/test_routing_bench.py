"""`make bench-routing`: each routed scenario through every router, and the paired ratios to the Service
(planted runs: what the report reads, without simulating)."""

from __future__ import annotations

import math
from typing import Any

from qwen_tools.sim import bench, routing
from qwen_tools.sim.cluster import ROUTERS

SEEDS = (101, 102)


def test_every_routed_scenario_runs_through_every_router_and_nothing_else_changes() -> None:
    made = routing.scenarios()
    assert len(made) == len(routing.ROUTED) * len(ROUTERS)
    base = {s.name: s for s in bench.SCENARIOS}
    for s in made:
        label, _, router = s.name.rpartition(" via ")
        assert router == s.router
        (original,) = [n for n, lab in routing.ROUTED.items() if lab == label]
        assert (s.trace, s.max_replicas, s.calibration) == (
            base[original].trace,
            base[original].max_replicas,
            base[original].calibration,
        )
    assert [s.name for s in routing.scenarios("long")] == [f"long prompts via {r}" for r in ROUTERS]


def runs(router: str, statics: dict[int, float], crossings: dict[int, float]) -> list[dict[str, Any]]:
    """References (a static fleet of 4 meeting the SLO at the given GPU-hours) and our crossings
    (NaN: none; negative: met the SLO at every setting, at most that many GPU-hours)."""
    out: list[dict[str, Any]] = []
    for seed in SEEDS:
        meets = {"slo_attainment": 0.995, "gpu_hours": statics[seed]}
        out.append({"scenario": f"long prompts via {router}", "seed": seed, "kind": "references",
                    "statics": {"3": {"slo_attainment": 0.9, "gpu_hours": 1.0}, "4": meets}})  # fmt: skip
        gpu_h = crossings[seed]
        crossing = {"crossed": gpu_h > 0, "gpu_hours": gpu_h if gpu_h > 0 else math.nan}
        if gpu_h < 0:  # met the SLO at every setting, the cheapest at -gpu_h
            crossing |= {"why": "met the SLO at every setting", "cheapest_meeting": -gpu_h}
        out.append(
            {"scenario": f"long prompts via {router}", "seed": seed, "kind": "ours", "crossing": crossing}
        )
    return out


def test_a_router_is_compared_with_the_service_seed_by_seed() -> None:
    planted = [
        *runs("random", {101: 4.0, 102: 6.0}, {101: 10.0, 102: 8.0}),
        *runs("builtin", {101: 2.0, 102: 3.0}, {101: 5.0, 102: math.nan}),
    ]
    statics = routing.ratios(planted, "long prompts", "builtin", "references")
    assert statics is not None
    assert statics["mean"] == 0.5
    assert statics["low"] == statics["high"] == 0.5, "the same ratio on both seeds"
    assert not statics["upper_bound"]
    assert routing.ratios(planted, "long prompts", "builtin", "ours") is None, "no crossing on one seed"
    assert routing.ratios(planted, "long prompts", "least", "references") is None, "not run"


def test_a_router_that_met_the_slo_at_every_setting_is_compared_as_an_upper_bound() -> None:
    planted = [
        *runs("random", {101: 4.0, 102: 6.0}, {101: 10.0, 102: 8.0}),
        *runs("builtin", {101: 2.0, 102: 3.0}, {101: 5.0, 102: -2.0}),
    ]
    ours = routing.ratios(planted, "long prompts", "builtin", "ours")
    assert ours is not None
    assert ours["mean"] == (0.5 + 0.25) / 2
    assert ours["upper_bound"]
    assert routing._ratio(ours).startswith("at most 0.38")
    service_bound = [*runs("random", {101: 4.0, 102: 6.0}, {101: 10.0, 102: -8.0}), *planted[4:]]
    assert routing.ratios(service_bound, "long prompts", "builtin", "ours") is None, "a bound over a bound"
