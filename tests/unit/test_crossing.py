"""The benchmark's search for where a policy crosses the SLO, and the simulator parts a fair benchmark
needs: a burn-in, a drawn card, GPU nodes that take time to come, vLLM's moment of recording queue time."""

from __future__ import annotations

import math

import pytest

from qwen_tools.sim import crossing, policies, trace
from qwen_tools.sim.cluster import Cluster, ColdStart, Nodes, Settings
from qwen_tools.sim.crossing import Knob
from qwen_tools.sim.engine import Engine, Request
from qwen_tools.sim.gpus import GPUS, drawn, model, pessimistic

GOAL = 0.99
TARGET = Knob("target")
GRID = (8.0, 12.0, 18.0, 27.0, 40.0, 60.0)


def smooth(cross_at: float, slope: float = 0.004) -> tuple[list[float], object]:
    """A policy whose attainment falls with its target and whose cost falls as 100 / target."""
    calls: list[float] = []

    def measure(target: float) -> tuple[float, float]:
        calls.append(target)
        attainment = min(1.0, GOAL + slope * math.log(cross_at / target))
        return 100 / target, attainment

    return calls, measure


def test_a_bracket_in_the_grid_is_bisected_to_the_crossing() -> None:
    calls, measure = smooth(cross_at=21.0)
    found = crossing.search(GRID, TARGET, measure, GOAL)
    assert found.crossed
    assert found.bracket == pytest.approx((found.bracket[0], found.bracket[1]))
    meets, misses = found.bracket
    assert meets < 21.0 < misses, "the crossing lies inside the final bracket"
    assert misses / meets < (27.0 / 18.0) ** 0.26, "two halvings of a 1.5x step"
    assert found.knob == pytest.approx(21.0, rel=0.02)
    assert found.gpu_hours == pytest.approx(100 / 21.0, rel=0.03)
    assert len(calls) == len(GRID) + 2


def test_a_curve_that_always_meets_is_widened_until_it_misses() -> None:
    _, measure = smooth(cross_at=75.0)  # every grid level meets: the grid's cheapest is only an upper bound
    found = crossing.search(GRID, TARGET, measure, GOAL)
    assert found.crossed
    assert 60.0 < found.knob < 90.0
    assert found.gpu_hours < 100 / 60.0, "cheaper than the grid's cheapest point"


def test_no_crossing_within_the_widened_range_is_said_not_guessed() -> None:
    _, never = smooth(cross_at=1.0)  # misses at every setting, down to the tightest tried
    found = crossing.search(GRID, TARGET, never, GOAL)
    assert not found.crossed
    assert math.isnan(found.gpu_hours)
    assert "missed the SLO at every setting, down to target=" in found.why
    _, always = smooth(cross_at=10_000.0)
    found = crossing.search(GRID, TARGET, always, GOAL)
    assert not found.crossed
    assert "met the SLO at every setting, up to target=" in found.why


def test_a_curve_that_is_not_monotone_is_read_at_its_cheapest_crossing() -> None:
    def measure(target: float) -> tuple[float, float]:
        attainment = {8.0: 1.0, 12.0: 0.98, 18.0: 0.995, 27.0: 0.995, 40.0: 0.97, 60.0: 0.9}.get(target)
        if attainment is None:  # between grid points: halfway
            attainment = 0.992 if target < 15 else 0.99 if target < 33 else 0.97
        return 100 / target, attainment

    found = crossing.search(GRID, TARGET, measure, GOAL)
    assert found.crossed
    assert found.bracket is not None
    assert found.bracket[0] >= 27.0, "the looser bracket is the cheaper crossing"


def test_a_fraction_knob_widens_by_steps_and_stays_in_its_limits() -> None:
    high = Knob("high", low=0.3, high=1.0, geometric=False)
    assert high.beyond(0.95, 0.9) == pytest.approx(0.975), "halfway to the limit, not past it"
    assert high.beyond(0.5, 0.6) == pytest.approx(0.4)
    assert high.beyond(0.31, 0.32) is None or high.beyond(0.31, 0.32) > 0.3


# ---------------------------------------------------------------------------------- simulator parts

A10G = GPUS["a10g"]


def test_the_burn_in_is_neither_scored_nor_billed() -> None:
    steady = trace.Trace("t", tuple(float(t) for t in range(0, 1200, 2)), (500,) * 600, (100,) * 600)
    whole = Cluster(steady, policies.Static(2), Settings(A10G, 2, 2, 2, tail=0.0)).run()
    burned = Cluster(steady, policies.Static(2), Settings(A10G, 2, 2, 2, tail=0.0, score_from=600.0)).run()
    assert whole.gpu_hours == pytest.approx(2 * whole.end / 3600)
    assert burned.gpu_hours == pytest.approx(2 * (burned.end - 600.0) / 3600)
    assert len(burned.scored) == len([r for r in burned.requests if r.arrival >= 600.0]) > 290
    assert len(whole.scored) == len(whole.requests)


def test_each_seed_draws_its_own_card_from_the_calibration_bands() -> None:
    cards = [drawn(A10G, seed) for seed in range(20)]
    slow = pessimistic(A10G)
    for card in cards:
        assert A10G.prefill_band[0] <= card.prefill_tok_s <= A10G.prefill_band[1]
        assert slow.single_stream_tok_s <= card.single_stream_tok_s <= A10G.single_stream_tok_s
        assert A10G.step_b32_s <= card.step_b32_s <= slow.step_b32_s
        assert slow.kv_tokens <= card.kv_tokens <= A10G.kv_tokens
    assert len({c.prefill_tok_s for c in cards}) == 20, "a different card per seed"
    assert drawn(A10G, 7) == drawn(A10G, 7), "and the same card for the same seed"
    assert model("a10g", "drawn", 3) == drawn(A10G, 3)
    assert sum(c.peak_decode_tok_s < A10G.peak_decode_tok_s for c in cards) >= 18, "the table is optimistic"


def test_pods_launched_together_wait_for_the_same_new_node() -> None:
    """Every launch needs a new node (new_node 1): four pods launched at once share one node's
    provisioning (4 GPUs a node), the fifth waits for a second node; without nodes none waits."""
    quiet = trace.Trace("q", (0.0,), (10,), (1,))
    nodes = Nodes(new_node=1.0, per_node=4, provision=ColdStart(300, 900))
    start = ColdStart(10, 10.1)
    run = Cluster(quiet, policies.Static(5), Settings(A10G, 0, 5, 0, cold_start=start, nodes=nodes))
    run._scale(0.0, 5)
    waits = [round(p.ready_at) for p in run.pods]  # in launch order
    assert waits[:4] == [waits[0]] * 4, "one node for the first four"
    assert waits[0] >= 300
    assert waits[4] != waits[0], "the fifth on another node"
    plain = Cluster(quiet, policies.Static(5), Settings(A10G, 0, 5, 0, cold_start=start))
    plain._scale(0.0, 5)
    assert all(p.ready_at < 20 for p in plain.pods)
    # What the policies see of it: the pods waiting for a node now, and each ready pod's wait.
    seen: list[policies.View] = []

    class Watch(policies.Static):
        def desired(self, view: policies.View) -> int:
            seen.append(view)
            return super().desired(view)

    watched = Cluster(quiet, Watch(5), Settings(A10G, 0, 5, 0, cold_start=start, nodes=nodes))
    watched._scale(0.0, 5)
    for at in (100.0, 2000.0):
        watched._evaluate(at)
    assert seen[0].unscheduled == 5
    assert seen[0].ready == ()
    assert seen[1].unscheduled == 0
    assert len(seen[1].node_waits) == 5
    assert all(w >= 300 for w in seen[1].node_waits)


def test_queue_time_is_observed_when_a_request_finishes_as_vllm_does() -> None:
    engine = Engine(A10G)
    engine.add(Request(0, 0.0, 1000, 4000, 1e9))  # scheduled at once, generating for a long while
    engine.advance(5.0)
    assert engine.vllm_totals().queue_time.count == 0, "scheduled, not finished: not yet observed"
    engine.advance(600.0)
    assert engine.vllm_totals().queue_time.count == 1


def test_the_walk_from_the_tuned_setting_finds_the_same_crossing_for_fewer_runs() -> None:
    for cross_at, start in ((21.0, 12.0), (21.0, 40.0), (75.0, 27.0)):
        full_calls, full_measure = smooth(cross_at)
        walk_calls, walk_measure = smooth(cross_at)
        full = crossing.search(GRID, TARGET, full_measure, GOAL, bisect=1)
        walked = crossing.walk(start, GRID, TARGET, walk_measure, GOAL, bisect=1)
        assert walked.crossed
        assert walked.gpu_hours == pytest.approx(full.gpu_hours, rel=0.02)
        assert len(walk_calls) < len(full_calls)


def test_the_walk_looks_past_a_first_miss_for_a_cheaper_crossing() -> None:
    shape = {8.0: 1.0, 12.0: 0.995, 18.0: 0.988, 27.0: 0.995, 40.0: 0.97, 60.0: 0.9}

    def measure(target: float) -> tuple[float, float]:
        nearest = min(shape, key=lambda k: abs(math.log(k / target)))
        return 100 / target, shape[nearest]

    walked = crossing.walk(12.0, GRID, TARGET, measure, GOAL, bisect=0)
    assert walked.bracket == (27.0, 40.0), "the near miss at 18 hid a cheaper crossing between 27 and 40"


def test_the_walk_says_when_it_never_crosses() -> None:
    _, never = smooth(cross_at=1.0)
    walked = crossing.walk(27.0, GRID, TARGET, never, GOAL)
    assert not walked.crossed
    assert "missed the SLO at every setting" in walked.why
    assert min(p.knob for p in walked.points) < 8.0, "it widened past the grid's tightest level"
