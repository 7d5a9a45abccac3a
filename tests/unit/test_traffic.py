"""Traffic from vLLM's counters and histograms: parsing real captures, increases, resets, shares."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_operator.metrics import PodRef, PodsSource, parse_vllm_totals
from qwen_operator.scaling import PodSample
from qwen_operator.traffic import INF, Histogram, Totals, Traffic, combine
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"


def capture(name: str) -> str:
    return (DATA / f"vllm-0.32-metrics-{name}.txt").read_text()


def test_the_real_capture_gives_its_counters_and_histograms() -> None:
    sample, totals = parse_vllm_totals(capture("under-load"))
    assert sample is not None
    assert totals is not None
    # Figures read off tests/data/vllm-0.32-metrics-under-load.txt.
    assert totals.ttft.count == 72
    assert dict(totals.ttft.buckets)[1.0] == 16
    assert dict(totals.ttft.buckets)[2.5] == 36
    assert totals.queue_time.count == 65
    assert totals.tpot.count == 65, "vllm:request_time_per_output_token_seconds: one per finished request"
    assert totals.prompt_tokens > 0
    assert totals.generation_tokens > 0
    assert totals.requests == pytest.approx(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in capture("under-load").splitlines()
            if line.startswith("vllm:request_success_total{")
        )
    )


def test_the_share_within_a_bound_interpolates_inside_its_bucket_like_histogram_quantile() -> None:
    h = Histogram.of({1.0: 16, 2.5: 36, 5.0: 72, INF: 72})
    assert h.share_within(1.0) == pytest.approx(16 / 72)
    assert h.share_within(2.0) == pytest.approx((16 + (1.0 / 1.5) * 20) / 72)
    assert h.share_within(5.0) == 1.0
    assert h.quantile(0.5) == pytest.approx(2.5), "the 36th of 72 is the last in the 1-2.5 s bucket"
    assert Histogram.of({1.0: 0, INF: 0}).share_within(1.0) is None, "no requests: no verdict"
    beyond = Histogram.of({1.0: 5, INF: 10})
    assert beyond.share_within(100) == 0.5, "past the last finite bound counts as over"


def test_increases_between_scrapes_and_a_reset_gives_no_traffic() -> None:
    before = Totals(100, 50, 4, Histogram.of({1.0: 3, INF: 4}))
    after = Totals(400, 250, 10, Histogram.of({1.0: 7, INF: 10}))
    traffic = after.since(before, 10)
    assert traffic is not None
    assert traffic.prompt_tokens_per_second == 30
    assert traffic.generation_tokens_per_second == 20
    assert traffic.requests_per_second == pytest.approx(0.6)
    assert traffic.ttft.buckets == ((1.0, 4), (INF, 6))
    restarted = Totals(5, 2, 1, Histogram.of({1.0: 1, INF: 1}))
    assert restarted.since(after, 10) is None, "a pod restart resets its counters"
    assert after.since(before, 0) is None


def test_a_service_sums_its_pods_and_skips_broken_parts() -> None:
    a = Traffic(60, 600, 300, 6, Histogram.of({2.0: 5, INF: 6}))
    b = Traffic(30, 300, 150, 3, Histogram.of({2.0: 3, INF: 3}))
    broken = Traffic(60, math.nan, 1, 1)
    total = combine([a, b, broken])
    assert total is not None
    assert total.seconds == 60
    assert total.prompt_tokens_per_second == pytest.approx(10 + 10), "b counts at its own rate"
    assert total.ttft.share_within(2.0) == pytest.approx(8 / 9)
    assert combine([broken]) is None
    other_buckets = Traffic(60, 60, 60, 1, Histogram.of({1.0: 1, INF: 1}))
    mixed = combine([a, other_buckets])
    assert mixed is not None
    assert mixed.ttft.buckets == (), "mixed bucket bounds: latency unknown, rates still summed"
    assert mixed.prompt_tokens == 660


INCREMENTS = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=12)
BOUND = st.floats(0, 100, allow_nan=False)


def cumulative(increments: list[float]) -> Histogram:
    """A histogram with ``increments`` observations in buckets bounded at 0.1, 0.4, 0.9, 1.6, ..."""
    counts, running = {}, 0.0
    for i, n in enumerate(increments):
        running += n
        counts[0.1 * (i + 1) * (i + 1)] = running
    return Histogram.of({**counts, INF: running})


@given(INCREMENTS, BOUND)
def test_the_share_is_a_fraction_and_grows_with_the_bound(increments: list[float], bound: float) -> None:
    h = cumulative(increments)
    share = h.share_within(bound)
    if h.count == 0:
        assert share is None
    else:
        assert share is not None
        assert 0 <= share <= 1
        wider = h.share_within(bound + 1)
        assert wider is not None
        assert wider >= share - 1e-12


def test_the_tail_aware_share_extrapolates_the_fall_below_the_bounds_bucket() -> None:
    h = Histogram.of({0.5: 60, 1.0: 80, 2.5: 96, INF: 100})  # above 0.5 s: 40%, above 1 s: 20%
    # Halving every half second: 5% above 2 s, where the linear share says 9.3%, the bucket 4%.
    assert h.share_within_tail(2.0) == pytest.approx(0.95)
    assert h.share_within(2.0) == pytest.approx(0.9067, abs=1e-4)
    assert h.share_within_tail(1.0) == 0.8, "on a bound: exact"
    assert h.share_within_tail(0.25) == h.share_within(0.25), "the first bucket has none below it"
    assert h.share_within_tail(10) == h.share_within(10), "past the last finite bound"


@given(INCREMENTS, BOUND)
def test_the_tail_aware_share_lies_between_the_linear_one_and_the_buckets(
    increments: list[float], bound: float
) -> None:
    """Inside a bucket, never fewer within than the even spread of histogram_quantile, never more than
    the whole bucket."""
    h = cumulative(increments)
    tail, linear, bucket = h.share_within_tail(bound), h.share_within(bound), h.share_by_bucket(bound)
    if h.count == 0:
        assert tail is None
        return
    assert tail is not None
    assert linear is not None
    assert bucket is not None
    assert linear - 1e-12 <= tail <= max(bucket, linear) + 1e-12


async def test_the_pods_source_reports_what_a_pod_served_since_its_last_scrape() -> None:
    clock = [1000.0]
    source = PodsSource(monotonic=lambda: clock[0])
    pod = PodRef("qwen-0", "10.0.0.1")
    sample = PodSample(1, 0, 0.1, 0.0)
    first = source._with_traffic(pod, sample, Totals(100, 10, 1))
    assert first.traffic is None, "one scrape is no rate"
    clock[0] += 15
    second = source._with_traffic(pod, sample, Totals(400, 160, 4))
    assert second.traffic is not None
    assert second.traffic.prompt_tokens_per_second == 20
    assert second.traffic.generation_tokens_per_second == 10
    clock[0] += 15
    reset = source._with_traffic(pod, sample, Totals(3, 1, 0))
    assert reset.traffic is None, "the pod restarted: no rate this time"
    same_name_new_pod = source._with_traffic(PodRef("qwen-0", "10.0.0.9"), sample, Totals(500, 0, 0))
    assert same_name_new_pod.traffic is None, "a replacement pod with the same name starts afresh"


async def test_the_pods_source_keeps_counters_of_services_not_due_this_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An evaluation asks only for the services that are due: the others' last counters must survive
    it, or they would never get a rate; pods gone for ten minutes are forgotten."""
    from qwen_operator.metrics import Target

    clock = [1000.0]
    source = PodsSource(monotonic=lambda: clock[0])
    a, b = PodRef("a-0", "10.0.0.1"), PodRef("b-0", "10.0.0.2")
    counters = {a.name: 100.0, b.name: 100.0}

    async def scrape(_session: object, pod: PodRef) -> PodSample | str:
        return source._with_traffic(pod, PodSample(1, 0, 0.1, 0.0), Totals(counters[pod.name], 0, 1))

    monkeypatch.setattr(source, "_scrape", scrape)
    ta, tb = Target("ml", "a", 1, (a,)), Target("ml", "b", 1, (b,))
    await source.observe([ta, tb])
    clock[0] += 15
    counters[a.name] += 300
    await source.observe([ta])  # b is not due
    clock[0] += 15
    counters[b.name] += 600
    got = await source.observe([tb])
    traffic = got[tb.key].samples["b-0"].traffic
    assert traffic is not None
    assert traffic.prompt_tokens_per_second == pytest.approx(600 / 30)
    clock[0] += 700
    await source.observe([ta])
    assert (b.name, b.ip) not in source.previous, "a pod unseen for ten minutes is forgotten"
