"""Parsing vLLM's /metrics (real 0.32 captures) and the shape of the batched Prometheus queries."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from qwen_operator import metrics
from qwen_operator.metrics import PodRef, PodsSource, Target, parse_vllm_metrics, parse_vllm_totals, queries
from qwen_operator.scaling import PodSample
from tests.conftest import DATA
from tests.fakevllm import render


@pytest.mark.parametrize(
    ("capture", "running", "waiting", "kv"),
    [
        ("idle", 0, 0, 0.0),
        ("under-load", 7, 24, 0.2047),
        ("kv-pressure", 20, 12, 0.9606),
    ],
)
def test_real_vllm_captures(capture: str, running: float, waiting: float, kv: float) -> None:
    sample = parse_vllm_metrics((DATA / f"vllm-0.32-metrics-{capture}.txt").read_text())
    assert sample is not None
    assert (sample.running, sample.waiting) == (running, waiting)
    assert sample.kv_cache_usage == pytest.approx(kv, abs=1e-4)


def test_engines_are_summed_and_kv_averaged() -> None:
    sample = parse_vllm_metrics(render(running=6, waiting=4, kv=0.5, engines=2))
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_cache_usage) == (6, 4, 0.5)


def test_older_vllm_kv_name_is_read() -> None:
    text = render(running=1, waiting=0, kv=0.3, old_kv_name=True)
    assert "vllm:kv_cache_usage_perc" not in text
    sample = parse_vllm_metrics(text)
    assert sample is not None
    assert sample.kv_cache_usage == pytest.approx(0.3)


def test_model_filter_and_missing_families() -> None:
    text = (DATA / "vllm-0.32-metrics-under-load.txt").read_text()
    assert parse_vllm_metrics(text, model_name="another-model") is None
    assert parse_vllm_metrics("# nothing from vLLM here\nup 1\n") is None


def test_only_vllm_s_families_are_parsed() -> None:
    """Anything else on the page (an HTML error page, other families, junk) is not parsed at all; a
    malformed vLLM line is an error."""
    assert parse_vllm_metrics("<html><body>502 Bad Gateway</body></html>") is None
    page = "junk {{{\n" + render(running=3, waiting=1, kv=0.2) + "other_family{a=} x y z\n"
    sample = parse_vllm_metrics(page)
    assert sample is not None
    assert (sample.running, sample.waiting) == (3, 1)
    with pytest.raises(ValueError, match=r"."):
        parse_vllm_metrics('vllm:num_requests_running{model_name="x" 1\n')


def test_one_query_per_signal_grouped_by_namespace_pod_and_service() -> None:
    q = queries("serving_qwenops_io_service")
    assert set(q) == {
        "running",
        "waiting",
        "kv",
        "timestamp",
        "prompt_tokens",
        "generation_tokens",
        "requests",
        "ttft",
        "queue_time",
        "tpot",
        "vllm:inter_token_latency_seconds_sum",
        "vllm:inter_token_latency_seconds_count",
        "vllm:iteration_tokens_total_count",
        "vllm:iteration_tokens_total_sum",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    }
    for promql in q.values():
        assert "by (namespace, pod, serving_qwenops_io_service" in promql
    assert "sum by (namespace, pod, serving_qwenops_io_service, le)" in q["ttft"]
    assert "increase(vllm:time_to_first_token_seconds_bucket{" in q["ttft"]
    assert "increase(vllm:request_time_per_output_token_seconds_bucket{" in q["tpot"], "per request"
    assert "finished_reason" in q["requests"], "one series per finish reason, each taken once"
    assert "vllm:gpu_cache_usage_perc" in q["kv"]
    assert "vllm:kv_cache_usage_perc" in q["kv"]


@pytest.mark.looptime
async def test_the_pods_source_has_one_deadline_per_evaluation_however_many_pods_are_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100 pods that never answer, 32 connections at a time: the evaluation still ends at its deadline
    (it used to take a deadline per batch of 32), and the pods that answered count."""
    source = PodsSource(timeout=0.5, concurrency=32)

    async def scrape(_session: object, pod: PodRef) -> PodSample | str:
        async with source.limit:
            if pod.name == "fast":
                return PodSample(3, 1, 0.2, 0.0)
            await asyncio.sleep(3600)  # a pod that accepts the connection and never answers
        return "unreachable"

    monkeypatch.setattr(source, "_scrape", scrape)
    silent = Target("ml", "chat", 101, (PodRef("fast"), *(PodRef(f"p{i}") for i in range(100))))
    loop = asyncio.get_running_loop()
    started = loop.time()
    obs = (await source.observe([silent]))[silent.key]
    assert loop.time() - started == pytest.approx(0.5)
    assert set(obs.samples) == {"fast"}
    assert obs.error is None, "one pod answered: the decision uses it and the silent pods are missing"


async def test_a_large_page_is_parsed_off_the_event_loop() -> None:
    """A pod serving a page just under the 4 MiB bound, of valid vLLM lines: the event loop (which also
    renews the Lease) keeps turning while it is parsed."""
    from aiohttp import web

    line = 'vllm:num_requests_running{model_name="m",engine="%d"} 1\n'
    lines = 60_000
    page = "".join(line % i for i in range(lines))
    assert 3 * 2**20 < len(page) < metrics.POD_METRICS_MAX_BYTES

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(text=page)

    app = web.Application()
    app.router.add_get("/metrics", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gaps: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        source = PodsSource(port=port, timeout=30)
        target = Target("ml", "big", 1, (PodRef("big-0", "127.0.0.1"),))
        obs = (await source.observe([target]))[target.key]
    finally:
        ticking.cancel()
        await runner.cleanup()
    assert obs.error is None
    assert obs.samples["big-0"].running == lines
    assert max(gaps) < 0.3, f"the event loop stalled {max(gaps):.2f} s"


def test_the_engine_steps_are_read_from_a_real_vllm_page() -> None:
    """vLLM 0.32's inter-token latency and tokens-per-step histograms (their sums and counts) are what
    the performance model learns from (perf.stepmodel)."""
    text = (DATA / "vllm-0.32-metrics-under-load.txt").read_text()
    _, totals = parse_vllm_totals(text)
    assert totals is not None
    steps = totals.engine
    expected = {}
    for line in text.splitlines():
        for name in ("inter_token_latency_seconds_sum", "inter_token_latency_seconds_count",
                     "iteration_tokens_total_count", "iteration_tokens_total_sum"):  # fmt: skip
            if line.startswith(f"vllm:{name}{{"):
                expected[name] = expected.get(name, 0.0) + float(line.split()[-1])
    assert expected["iteration_tokens_total_count"] > 0
    assert steps.decode_seconds == pytest.approx(expected["inter_token_latency_seconds_sum"])
    assert steps.decode_tokens == expected["inter_token_latency_seconds_count"]
    assert steps.steps == expected["iteration_tokens_total_count"]
    assert steps.step_tokens == expected["iteration_tokens_total_sum"]
    assert steps.decode_tokens <= totals.generation_tokens


def test_the_prefix_cache_s_lookups_and_hits_are_read_from_a_real_vllm_page() -> None:
    """vLLM 0.32's prefix-cache counters (prompt tokens looked up, and those found cached): the share
    of prompt tokens the engine did not compute, which the model's prefill leaves out; an increase
    between two scrapes; none on a page without them (an older vLLM), which counts as nothing cached."""
    _, loaded = parse_vllm_totals((DATA / "vllm-0.32-metrics-under-load.txt").read_text())
    _, pressed = parse_vllm_totals((DATA / "vllm-0.32-metrics-kv-pressure.txt").read_text())
    assert loaded is not None
    assert pressed is not None
    assert (loaded.engine.prefix_queries, loaded.engine.prefix_hits) == (22446, 4480)
    assert loaded.engine.cached_share == pytest.approx(4480 / 22446)
    assert pressed.engine.cached_share == pytest.approx(22784 / 28430)
    later = replace(loaded, engine=replace(loaded.engine, prefix_queries=32446, prefix_hits=12480))
    traffic = later.since(loaded, 60)
    assert traffic is not None
    assert traffic.engine.cached_share == pytest.approx(0.8)
    old = "\n".join(
        line
        for line in (DATA / "vllm-0.32-metrics-under-load.txt").read_text().splitlines()
        if "prefix_cache" not in line
    )
    _, without = parse_vllm_totals(old)
    assert without is not None
    assert without.engine.cached_share == 0.0


def test_the_router_s_own_metrics_are_read_and_anything_else_is_refused() -> None:
    """The router's page as its registry writes it (held, in flight per engine, arrivals); a page
    without them (a vLLM pod's, say) or with a negative or NaN figure is no reading."""
    from prometheus_client import generate_latest

    from qwen_operator.metrics import parse_router_metrics
    from qwen_router.app import Router

    router = Router()
    router.metrics.arrivals.inc(7)
    router.metrics.waiting.set(2)
    router.metrics.in_flight.labels("a").set(3)
    router.metrics.in_flight.labels("b").set(1)
    assert parse_router_metrics(generate_latest(router.metrics.registry).decode()) == (2.0, 4.0, 7.0)
    for page in (
        "vllm:num_requests_running 3\n",
        "qwen_router_waiting -1\nqwen_router_arrivals_total 3\n",
        "qwen_router_waiting NaN\nqwen_router_arrivals_total 3\n",
    ):
        with pytest.raises(ValueError, match=r"no router metrics|is -1|is nan"):
            parse_router_metrics(page)
