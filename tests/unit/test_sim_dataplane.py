"""The simulator's data plane options: vLLM's prefix cache, the routers (a Service, a least-requests
gateway, our router's own picker) and their holding, closed-loop clients."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from dataclasses import replace

import pytest

from qwen_operator import cli
from qwen_router import picker
from qwen_tools.sim import cluster, policies, score, trace
from qwen_tools.sim.cluster import Cluster, ColdStart, Settings, simulate
from qwen_tools.sim.engine import DONE, REJECTED, Engine, Request
from qwen_tools.sim.gpus import GPUS
from tests.conftest import DATA

A10G = GPUS["a10g"]
SLICE = DATA / "traces" / "conv-5min.csv"


def shared(i: int, at: float, prompt: int, prefix: int, prefix_len: int, output: int = 5) -> Request:
    return Request(i, at, prompt, output, at + 1e9, prefix=prefix, prefix_len=prefix_len)


def test_a_cached_system_prompt_is_not_computed_again() -> None:
    engine = Engine(A10G)
    first = shared(0, 0.0, 1200, prefix=7, prefix_len=1000)
    engine.add(first)
    engine.advance(10)
    second = shared(1, 10.0, 1200, prefix=7, prefix_len=1000)
    other = shared(2, 20.0, 1200, prefix=8, prefix_len=1000)
    engine.add(second)
    engine.advance(20)
    engine.add(other)
    engine.advance(30)
    assert {first.outcome, second.outcome, other.outcome} == {DONE}
    # 62 full blocks (992 tokens) of the system prompt are read from the cache: 208 tokens computed.
    assert second.ttft == pytest.approx(A10G.step_seconds(1, 1200 - 992, 0))
    assert other.ttft == pytest.approx(first.ttft), "another prefix is a miss"
    assert engine.prefix_hits == 992
    assert engine.prefix_queries == 3 * 1200
    # As vLLM counts them: every request's prompt is looked up, one without a shared prefix too.
    alone = Request(3, 30.0, 500, 5, 30.0 + 1e9)
    engine.add(alone)
    engine.advance(40)
    assert alone.outcome == DONE
    assert (engine.prefix_queries, engine.prefix_hits) == (3 * 1200 + 500, 992)
    totals = engine.vllm_totals().engine
    assert (totals.prefix_queries, totals.prefix_hits) == (3 * 1200 + 500, 992)
    # Both prefixes stay cached, unused: vLLM counts their blocks as free.
    assert engine.kv_usage == 0
    assert engine.free + engine.unused_cached == A10G.kv_blocks
    assert engine.unused_cached == 2 * 62


def test_cached_prefixes_give_way_to_requests_least_recently_used_first() -> None:
    tiny = replace(A10G)
    object.__setattr__(tiny, "kv_tokens", 200 * 16)
    engine = Engine(tiny)
    for i, prefix in enumerate((1, 2, 1)):  # prefix 1 used last
        engine.add(shared(i, float(i), 1000, prefix=prefix, prefix_len=960))
        engine.advance(i + 1.0)
    assert engine.unused_cached == 120
    # A request that needs 129 blocks: the 60 of prefix 2 (least recently used) go, prefix 1 stays.
    big = Request(9, 5.0, 2000, 60, 1e9)
    engine.add(big)
    engine.advance(60)
    assert big.outcome == DONE
    assert list(engine.prefixes) == [1]
    again = shared(10, 60.0, 1000, prefix=1, prefix_len=960)
    engine.add(again)
    engine.advance(70)
    assert again.ttft == pytest.approx(A10G.step_seconds(1, 40, 0))


def test_the_prefix_cache_loses_no_block_under_random_load() -> None:
    # Random prompts, prefixes, preemptions and timeouts on a small cache: every block comes back.
    tiny = replace(A10G)
    object.__setattr__(tiny, "kv_tokens", 400 * 16)
    rng = random.Random(3)
    engine = Engine(tiny)
    t = 0.0
    requests = []
    for i in range(400):
        t += rng.expovariate(4.0)
        engine.advance(t)
        r = Request(i, t, rng.randint(20, 3000), rng.randint(1, 400), t + rng.uniform(5, 60))
        r.prefix, r.prefix_len = rng.choice([(0, 0), (1, 500), (2, 1500), (3, 40)])
        engine.add(r)
        requests.append(r)
        assert engine.free >= 0
        assert engine.free + engine.unused_cached <= tiny.kv_blocks
    engine.advance(t + 1000)
    assert engine.idle
    assert all(r.outcome for r in requests)
    assert engine.preemptions > 0, "the cache was short enough to preempt"
    assert engine.prefix_hits > 0
    assert engine.free + engine.unused_cached == tiny.kv_blocks
    assert all(p.users == 0 for p in engine.prefixes.values())


def test_shared_prompts_keep_the_trace_and_name_a_prefix_for_most_requests() -> None:
    base = trace.load(SLICE)
    t = base.with_shared_prompts(seed=1)
    assert (t.arrivals, t.prompts, t.outputs) == (base.arrivals, base.prompts, base.outputs)
    apps = Counter(p for p, _ in t.prefixes)
    assert 0.75 < 1 - apps[0] / len(t) < 0.85
    assert apps[1] > apps[4] > apps[50] > 0, "applications are Zipf-popular"
    assert len(apps) > 100
    assert all(0 <= n < prompt for (_, n), prompt in zip(t.prefixes, t.prompts, strict=True))
    assert base.prefix(0) == (0, 0)


def settings(**kw: object) -> Settings:
    return replace(Settings(A10G, 1, 4, 4), **kw)  # type: ignore[arg-type]


def test_prefix_affinity_keeps_an_application_on_one_pod_and_saves_prefill() -> None:
    # 200 applications' system prompts over 8 pods: without affinity, every pod computes each one.
    t = trace.load(SLICE).with_shared_prompts(seed=1)
    fleet = policies.Static(8)
    affine = simulate(t, fleet, settings(router="builtin", seed=1, max_replicas=8, start_replicas=8))
    spread = simulate(t, fleet, settings(router="least", seed=1, max_replicas=8, start_replicas=8))

    def hit_rate(result: object) -> float:
        pods = result.pods  # type: ignore[attr-defined]
        hits = sum(p.engine.prefix_hits for p in pods)
        queries = sum(p.engine.prefix_queries for p in pods)
        return hits / queries

    assert hit_rate(affine) > 1.1 * hit_rate(spread)
    a, b = score.summarize(affine), score.summarize(spread)
    assert a.ttft_p50_s < b.ttft_p50_s
    assert a.slo_attainment == b.slo_attainment == 1.0


def test_prefix_affinity_gives_way_to_a_less_loaded_pod() -> None:
    # One application only: all of it would land on one pod; bounded load spreads it.
    base = trace.load(SLICE)
    one_app = base.with_shared_prompts(seed=1, apps=1, share=1.0)
    result = simulate(one_app, policies.Static(4), settings(router="builtin", seed=1, warmup=0.0))
    per_pod = sorted(len(p.engine.finished) for p in result.pods)
    assert per_pod[0] > 0.05 * sum(per_pod), "every pod takes a share when the favourites are loaded"
    assert per_pod[-1] < 0.4 * sum(per_pod), "no pod takes everything"


def test_closed_loop_clients_send_one_request_at_a_time_and_slow_down_with_the_service() -> None:
    t = trace.load(SLICE)
    clients = 40
    runs = {}
    for pods in (1, 4):
        cluster = Cluster(
            t, policies.Static(pods), replace(Settings(A10G, 1, 4, pods), clients=clients, think=5.0)
        )
        result = cluster.run()
        runs[pods] = result
        by_client: dict[int, list[Request]] = {}
        for r in result.requests:
            by_client.setdefault(r.user, []).append(r)
        assert set(by_client) == set(range(clients))
        for sent in by_client.values():
            for before, after in itertools.pairwise(sent):
                ended = before.finish if before.finish is not None else before.deadline
                assert after.arrival >= ended - 1.0, "a client waits for its last answer"
        assert max(r.arrival for r in result.requests) < t.duration
    one, four = (score.summarize(runs[n]) for n in (1, 4))
    assert four.requests > one.requests, "a faster service gets more requests from the same clients"
    assert four.ttft_p99_s < one.ttft_p99_s


def test_simulate_takes_the_data_plane_options(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", "--trace", str(SLICE), "--policy", "static:3", "--json", "--png", ""]
    assert cli.main([*common, "--clients", "20", "--think", "5"]) == 0
    closed = json.loads(capsys.readouterr().out)
    assert 20 <= closed["requests"] < 1445, "twenty clients send what their answers allow, not the trace"
    assert cli.main([*common, "--router", "builtin", "--shared-prompts", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 1445


class _OneReplica:
    """Asks for one replica at its first evaluation (the fleet starts empty)."""

    name, interval, deletion_cost = "one", 1.0, False

    def desired(self, view: object) -> int:
        return 1


def _from_empty(router: str, requests: int = 10) -> list[Request]:
    t = trace.Trace("burst", tuple(float(i) for i in range(requests)), (200,) * requests, (10,) * requests)
    cold = ColdStart(20.0, 21.0)
    return Cluster(t, _OneReplica(), replace(Settings(A10G, 0, 1, 0, router, cold_start=cold))).run().requests


def test_a_service_refuses_what_arrives_with_no_pod_ready_and_a_router_holds_it() -> None:
    assert {r.outcome for r in _from_empty("random")} == {REJECTED}, "nothing behind the Service"
    for router in ("least", "builtin"):
        held = _from_empty(router)
        assert {r.outcome for r in held} == {DONE}, router
        assert min(r.ttft for r in held if r.ttft is not None) > 10, "answered once the pod was ready"


def test_the_builtin_router_holds_up_to_its_queue_size_then_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "HOLD_QUEUE", 3)
    outcomes = Counter(r.outcome for r in _from_empty("builtin"))
    assert outcomes == {DONE: 3, REJECTED: 7}


def test_the_builtin_router_routes_with_the_routers_own_picker(monkeypatch: pytest.MonkeyPatch) -> None:
    # One application's system prompt: the picker sends it to its favourite within the load bound; with
    # the bound made loose, the favourite takes everything: the simulation follows the router's code.
    t = trace.load(SLICE).with_shared_prompts(seed=1, apps=1, share=1.0, tokens=(2000, 2000))
    tight = simulate(t, policies.Static(4), settings(router="builtin", seed=1, warmup=0.0))
    real = picker.Picker
    monkeypatch.setattr(picker, "Picker", lambda: real(bound=100.0))
    loose = simulate(t, policies.Static(4), settings(router="builtin", seed=1, warmup=0.0))
    busiest = [max(len(p.engine.finished) for p in r.pods) / len(r.requests) for r in (tight, loose)]
    assert busiest[0] < 0.4 < 0.8 < busiest[1]  # (prompts shorter than the name stay spread)


class _Recorder:
    """Keeps one replica and records what each evaluation saw of the router."""

    name, interval, deletion_cost = "recorder", 15.0, False

    def __init__(self) -> None:
        self.seen: list[object] = []

    def desired(self, view: policies.View) -> int:
        self.seen.append(view.router)
        return 1


def test_the_scaler_reads_the_builtin_routers_counts_as_it_would_its_metrics() -> None:
    t = trace.load(SLICE)
    behind = _Recorder()
    simulate(t, behind, settings(router="builtin", seed=1, warmup=0.0, start_replicas=1))
    counts = [r.arrivals for r in behind.seen]  # type: ignore[attr-defined]
    assert counts == sorted(counts), "a counter"
    assert counts[-1] == len(t)
    assert any(r.in_flight > 0 for r in behind.seen)  # type: ignore[attr-defined]
    service = _Recorder()
    simulate(t, service, settings(router="random", seed=1, warmup=0.0, start_replicas=1))
    assert set(service.seen) == {None}, "a Service has no metrics of its own"
