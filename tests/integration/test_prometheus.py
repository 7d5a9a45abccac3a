"""The Prometheus source against a real Prometheus scraping vLLM-format endpoints over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from qwen_operator import api, cli, scaling, urls
from qwen_operator.metrics import PodRef, PrometheusConfig, PrometheusSource, Target
from qwen_tools import fit
from tests.fakevllm import FakePrometheusAPI, FakeVLLM
from tests.prom import SCRAPE_CONFIG, Prometheus

pytestmark = pytest.mark.integration

SPEC = api.AutoscalingSpec.model_validate(
    {"enabled": True, "minReplicas": 1, "maxReplicas": 10, "targets": {"concurrencyPerReplica": 8}}
)
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
WARM = scaling.State(data_since=datetime(2026, 11, 21, 11, tzinfo=UTC), last_evaluated=NOW)


@pytest.fixture
def pods() -> Iterator[list[FakeVLLM]]:
    servers = [FakeVLLM(host=f"127.0.0.{10 + i}") for i in range(5)]
    yield servers
    for s in servers:
        s.close()


def source(url: str, timeout: float = 5.0) -> PrometheusSource:
    return PrometheusSource(PrometheusConfig(urls.parse(url)), timeout=timeout)


def target(ns: str, name: str, *pod_names: str, replicas: int | None = None) -> Target:
    refs = tuple(PodRef(p) for p in pod_names)
    return Target(ns, name, replicas if replicas is not None else len(refs), refs)


async def test_batched_queries_split_per_service(prometheus: Prometheus, pods: list[FakeVLLM]) -> None:
    pods[0].set(running=14, waiting=2, kv=0.5)
    pods[1].set(running=4, waiting=0, kv=0.1, old_kv_name=True)  # vLLM < 0.12
    pods[2].set(running=6, waiting=6, kv=0.9, engines=2)  # data parallel: two engines in one pod
    pods[3].set(running=1, waiting=0, kv=0.0)  # same pod name and service name, other namespace
    pods[4].set(running=99, waiting=0, kv=1.0)  # scraped, but the pod is not ready
    prometheus.set_targets(
        [
            (pods[0].address, "ml", "chat-0", "chat"),
            (pods[1].address, "ml", "chat-1", "chat"),
            (pods[2].address, "ml", "code-0", "code"),
            (pods[3].address, "team-b", "chat-0", "chat"),
            (pods[4].address, "ml", "chat-9", "chat"),
        ]
    )
    prometheus.wait_for_series(5)
    chat = target("ml", "chat", "chat-0", "chat-1")
    code = target("ml", "code", "code-0")
    other = target("team-b", "chat", "chat-0")
    obs = await source(prometheus.url).observe([chat, code, other])

    assert set(obs[chat.key].samples) == {"chat-0", "chat-1"}, obs
    c0, c1 = obs[chat.key].samples["chat-0"], obs[chat.key].samples["chat-1"]
    assert (c0.running, c0.waiting, c0.kv_cache_usage) == (14, 2, 0.5)
    assert (c1.running, c1.kv_cache_usage) == (4, pytest.approx(0.1))
    assert 0 <= c0.age_seconds < 5
    k = obs[code.key].samples["code-0"]
    assert (k.running, k.waiting, k.kv_cache_usage) == (6, 6, pytest.approx(0.9))
    assert obs[other.key].samples["chat-0"].running == 1
    assert all(o.error is None for o in obs.values())

    decision = scaling.decide(obs[chat.key], SPEC, WARM, NOW)
    assert (decision.replicas, decision.reason) == (3, scaling.Reason.ABOVE_TARGET), decision.message
    assert decision.message.startswith("concurrency 20 vs target 8 x 2 ready")


async def test_query_count_does_not_grow_with_services(prometheus: Prometheus, pods: list[FakeVLLM]) -> None:
    prometheus.set_targets([(p.address, "ml", f"s{i}-0", f"s{i}") for i, p in enumerate(pods)])
    prometheus.wait_for_series(5)
    src = source(prometheus.url)

    async def count(targets: list[Target]) -> float:
        before = prometheus.query_requests()
        obs = await src.observe(targets)
        assert len(obs) == len(targets)
        return prometheus.query_requests() - before

    one = await count([target("ml", "s0", "s0-0")])
    many = await count(
        [target("ml", f"s{i}", f"s{i}-0") for i in range(5)]
        + [target("ns", f"x{i}", f"x{i}-0") for i in range(45)]
    )
    assert one == many == len(src.queries) == 16


async def test_traffic_per_pod_from_counters_and_histograms(
    prometheus: Prometheus, pods: list[FakeVLLM]
) -> None:
    """Tokens, requests and latency histograms, as increases over the last minute, split per pod and
    service; an idle pod's counters do not move."""
    pods[0].set(running=3, busy=True)  # the under-load capture, its counters growing every scrape
    pods[1].set(running=0)  # idle: the idle capture, counters constant
    prometheus.set_targets(
        [(pods[0].address, "ml", "chat-0", "chat"), (pods[1].address, "ml", "chat-1", "chat")]
    )
    prometheus.wait_for_series(2)
    chat = target("ml", "chat", "chat-0", "chat-1")
    deadline = time.monotonic() + 20
    while True:  # increase() needs two samples of each series, and the two pods are scraped apart
        obs = (await source(prometheus.url).observe([chat]))[chat.key]
        busy, quiet = obs.samples.get("chat-0"), obs.samples.get("chat-1")
        if (
            busy is not None
            and busy.traffic is not None
            and busy.traffic.ttft.count > 0
            and quiet is not None
            and quiet.traffic is not None
        ):
            break
        assert time.monotonic() < deadline, f"no traffic seen: {obs}"
        await asyncio.sleep(0.5)
    t = busy.traffic
    assert t.seconds == 60
    # Every scrape adds the capture's own counts, so the shares are the capture's (72 first tokens,
    # 16 of them within 1 s, 36 within 2.5 s; tests/data/vllm-0.32-metrics-under-load.txt).
    # (increase() extrapolates each series to the window's edges on its own: ratios hold to a percent or so.)
    assert t.ttft.share_within(1.0) == pytest.approx(16 / 72, rel=0.02)
    assert t.ttft.share_within(2.5) == pytest.approx(36 / 72, rel=0.02)
    assert t.queue_time.count / t.ttft.count == pytest.approx(65 / 72, rel=0.02)
    assert t.tpot.count / t.ttft.count == pytest.approx(65 / 72, rel=0.02)
    assert t.prompt_tokens > 0
    assert t.generation_tokens > 0
    assert t.requests > 0
    # The engine's steps (perf.stepmodel reads them): 35,000 decode tokens over 111.74 s of steps, and
    # 4,386 steps computing 53,038 tokens.
    steps = t.engine
    assert steps.decode_seconds / steps.decode_tokens == pytest.approx(111.74 / 35000, rel=0.02)
    assert steps.step_tokens / steps.steps == pytest.approx(53038 / 4386, rel=0.02)
    assert steps.decode_tokens / t.ttft.count == pytest.approx(35000 / 72, rel=0.02)
    # The prefix cache's lookups and hits (the model leaves the cached share out of the prefill):
    # 22,446 prompt tokens looked up, 4,480 found.
    assert steps.cached_share == pytest.approx(4480 / 22446, rel=0.02)
    assert steps.prefix_queries / t.ttft.count == pytest.approx(22446 / 72, rel=0.02)
    idle = quiet.traffic
    assert (idle.prompt_tokens, idle.requests, idle.ttft.count) == (0, 0, 0)


async def test_tune_fits_from_a_services_range_in_prometheus(
    prometheus: Prometheus, pods: list[FakeVLLM], capsys: pytest.CaptureFixture[str]
) -> None:
    """``qwen-operator tune --prometheus``: the service's windows from range queries, its own pods only
    (the same service name in another namespace does not count), the load per pod that reported."""
    for pod in pods[:4]:
        pod.set(running=3, busy=True)  # every scrape adds the under-load capture's counts
    prometheus.set_targets(
        [
            (pods[0].address, "ml", "chat-0", "chat"),
            (pods[1].address, "ml", "chat-1", "chat"),
            (pods[2].address, "team-b", "chat-0", "chat"),
            (pods[3].address, "ml", "solo-0", "solo"),  # one pod: the per-pod load to compare with
        ]
    )
    prometheus.wait_for_series(4)
    await asyncio.sleep(12)  # two 5 s windows of 1 s scrapes
    config = PrometheusConfig(urls.parse(prometheus.url))
    until = time.time()
    seed = (6000.0, 820.0)

    def found(name: str) -> list[fit.Window]:
        answers = fit.query_prometheus(config, "ml", name, until - 15, until, 5)
        return [w for w in fit.from_prometheus(answers, 1.0, 5, seed) if w.requests > 0]

    chat, solo = found("chat"), found("solo")
    assert chat, "no window with traffic"
    assert solo, "no window with traffic"
    for w in chat:
        # The capture's mix: 22,446 prompt and 35,072 generated tokens, 72 first tokens (16 within 1 s).
        assert w.prompt_tokens_per_second / w.generation_tokens_per_second == pytest.approx(
            22446 / 35072, rel=0.02
        )
        assert w.attainment == pytest.approx(16 / 72, rel=0.05)
        assert w.work == pytest.approx(
            (w.prompt_tokens_per_second / seed[0] + w.generation_tokens_per_second / seed[1]) / 2, rel=1e-6
        ), "the load is per pod that reported"
    # Two pods scraped as often as the one: twice its tokens (team-b's pod would make it three times).
    ratio = chat[-1].prompt_tokens_per_second / solo[-1].prompt_tokens_per_second
    assert ratio == pytest.approx(2, rel=0.25), ratio
    # With a TPOT bound the per-request TPOT histogram is queried too: the capture's 65 decodes all lie
    # in its first bucket (10 ms), so half of them within 5 ms, as histogram_quantile would say; all 72
    # first tokens are within 5 s.
    answers = fit.query_prometheus(config, "ml", "chat", until - 15, until, 5, tpot=True)
    both = [w for w in fit.from_prometheus(answers, 5.0, 5, seed, tpot_bound=0.005) if w.requests > 0]
    assert both
    assert all(w.attainment == pytest.approx(0.5, rel=0.05) for w in both), both
    assert all(w.attainment == 1.0 for w in fit.from_prometheus(answers, 5.0, 5, seed) if w.requests > 0)
    # The command prints the block to paste (the shares are met at a 5 s bound; 16/72 within 1 s is not).
    assert cli.main(["tune", "--prometheus", prometheus.url, "--service", "ml/chat", "--since", "15s",
                     "--window", "5", "--ttft", "5", "--percentile", "95"]) == 0  # fmt: skip
    slo = api.LatencySLO.model_validate(yaml.safe_load(capsys.readouterr().out)["spec"]["autoscaling"]["slo"])
    assert slo.time_to_first_token_seconds == 5
    assert slo.replica_capacity is not None


async def test_empty_and_nan_hold_replicas(prometheus: Prometheus, pods: list[FakeVLLM]) -> None:
    pods[0].set(mode="nan")
    prometheus.set_targets([(pods[0].address, "ml", "nan-0", "nan")])
    prometheus.wait_for_series(1)
    nan, empty = target("ml", "nan", "nan-0", replicas=3), target("ml", "nothing", "nothing-0", replicas=3)
    obs = await source(prometheus.url).observe([nan, empty])
    assert obs[empty.key].samples == {}
    for key in (nan.key, empty.key):
        decision = scaling.decide(obs[key], SPEC, WARM, NOW)
        assert (decision.replicas, decision.reason) == (3, scaling.Reason.METRICS_UNAVAILABLE)


async def test_prometheus_down_holds_then_recovers(prometheus: Prometheus, pods: list[FakeVLLM]) -> None:
    pods[0].set(running=0, waiting=0, kv=0)
    prometheus.set_targets([(pods[0].address, "ml", "q-0", "q")])
    prometheus.wait_for_series(1)
    src, t = source(prometheus.url, timeout=2), target("ml", "q", "q-0", replicas=4)
    state = WARM

    prometheus.stop()
    obs = (await src.observe([t]))[t.key]
    assert obs.error is not None
    assert obs.error.startswith("Prometheus failed: cannot connect (")
    down = scaling.decide(obs, SPEC, state, NOW)
    assert (down.replicas, down.reason) == (4, scaling.Reason.METRICS_UNAVAILABLE)
    assert "failed" in down.message

    prometheus.start()  # same data dir and port
    prometheus.wait_for_series(1)
    obs = (await src.observe([t]))[t.key]
    assert obs.error is None
    assert obs.samples["q-0"].running == 0
    back = scaling.decide(obs, SPEC, down.state, NOW)
    assert back.metrics_available
    # The data run restarted: an idle service still waits a full window before it shrinks.
    assert (back.replicas, back.reason) == (4, scaling.Reason.AWAITING_FULL_WINDOW)


@pytest.mark.parametrize("mode", ["html", "slow"])
async def test_html_or_slow_answers_are_errors_within_the_deadline(mode: str) -> None:
    fake = FakePrometheusAPI(mode)
    try:
        t = target("ml", "q", "q-0", replicas=2)
        started = time.monotonic()
        obs = (await source(fake.url, timeout=0.5).observe([t]))[t.key]
        assert time.monotonic() - started < 2
        assert obs.error is not None
        said = "no answer within 0.5 s" if mode == "slow" else "a malformed answer (not JSON)"
        assert obs.error == f"Prometheus failed: {said}"
        decision = scaling.decide(obs, SPEC, WARM, NOW)
        assert (decision.replicas, decision.reason) == (2, scaling.Reason.METRICS_UNAVAILABLE)
    finally:
        await asyncio.to_thread(fake.close)


async def test_a_second_scrape_job_of_the_same_pods_counts_nothing_twice(
    tmp_path: Path, pods: list[FakeVLLM]
) -> None:
    """The operator annotates its pods with prometheus.io/scrape, so a cluster's common
    ``kubernetes-pods`` job may scrape them beside the documented job: the same series twice, differing
    only in ``job``. The scaler must not see twice the load."""
    common = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    common.pop("kubernetes_sd_configs")
    common |= {
        "job_name": "kubernetes-pods",
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "file_sd_configs": [{"files": [str(tmp_path / "targets.json")], "refresh_interval": "1s"}],
    }
    prom = Prometheus(tmp_path, extra_jobs=[common])
    prom.start()
    try:
        pods[0].set(running=14, waiting=2, kv=0.5, busy=True)
        pods[2].set(running=6, waiting=6, kv=0.9, engines=2)
        prom.set_targets(
            [(pods[0].address, "ml", "chat-0", "chat"), (pods[2].address, "ml", "chat-1", "chat")]
        )
        prom.wait_for_series(2)
        deadline = time.monotonic() + 20
        # 3 engine series (1 + 2) per job, from both jobs
        while len(prom.query('vllm:num_requests_running{serving_qwenops_io_service="chat"}')) < 6:
            assert time.monotonic() < deadline, "the two jobs never both scraped both pods"
            await asyncio.sleep(0.2)
        chat = target("ml", "chat", "chat-0", "chat-1")
        per_job = 'increase(vllm:prompt_tokens_total{serving_qwenops_io_service="chat",pod="chat-0"}[1m])'
        while len([r for r in prom.query(per_job) if float(r["value"][1]) > 0]) < 2:
            assert time.monotonic() < deadline, "no increase from both jobs"
            await asyncio.sleep(0.2)
        obs = (await source(prom.url).observe([chat]))[chat.key]
        each_job = [float(r["value"][1]) for r in prom.query(per_job)]
    finally:
        prom.stop()
    traffic = obs.samples["chat-0"].traffic
    assert traffic is not None
    assert traffic.prompt_tokens <= max(each_job) * 1.2, f"counted per job and added: {traffic} vs {each_job}"
    c0, c1 = obs.samples["chat-0"], obs.samples["chat-1"]
    assert (c0.running, c0.waiting, c0.kv_cache_usage) == (14, 2, 0.5)
    assert (c1.running, c1.waiting, c1.kv_cache_usage) == (6, 6, pytest.approx(0.9)), "two engines, once each"
    decision = scaling.decide(obs, SPEC, WARM, NOW)
    assert decision.message.startswith("concurrency 28 vs target 8 x 2 ready"), decision.message
