"""Scores of one simulated run, and the GPU-hour lower bound of the oracle."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from qwen_tools.sim.cluster import Result
from qwen_tools.sim.engine import DONE, KILLED, REJECTED, TIMEOUT, Request
from qwen_tools.sim.gpus import GPU
from qwen_tools.sim.trace import Trace

SLO_TTFT = 2.0
REVERSAL_SECONDS = 300.0

TtftTarget = Callable[[Request], float]


def fixed_target(seconds: float = SLO_TTFT) -> TtftTarget:
    return lambda req: seconds


def length_scaled_target(gpu: GPU, seconds: float = SLO_TTFT) -> TtftTarget:
    """For traces where even the largest fleet cannot meet a flat 2 s: 2 s of queueing plus twice the
    unloaded prefill time of the request's prompt on this GPU."""
    return lambda req: seconds + 2 * req.prompt / gpu.prefill_tok_s


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class Summary:
    policy: str
    requests: int
    slo_attainment: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p99_s: float
    gpu_hours: float
    scaling_actions: int
    reversals: int
    killed_requests: int
    timed_out_requests: int
    rejected_requests: int
    preemptions: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def reversals(actions: Sequence[tuple[float, int, int]], within: float = REVERSAL_SECONDS) -> int:
    """Actions that undo the direction of the previous one within ``within`` seconds (flapping)."""
    count = 0
    for (t0, a0, b0), (t1, a1, b1) in itertools.pairwise(actions):
        if t1 - t0 <= within and (b0 - a0) * (b1 - a1) < 0:
            count += 1
    return count


def summarize(result: Result, target: TtftTarget | None = None) -> Summary:
    target = target or fixed_target()
    reqs = result.scored
    ok = [r for r in reqs if r.outcome == DONE and r.ttft is not None and r.ttft <= target(r)]
    ttfts = [r.ttft for r in reqs if r.ttft is not None]
    tpots = [t for r in reqs if r.outcome == DONE and (t := r.tpot) is not None]
    return Summary(
        policy=result.policy,
        requests=len(reqs),
        slo_attainment=len(ok) / len(reqs) if reqs else 1.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tpot_p99_s=percentile(tpots, 99),
        gpu_hours=result.gpu_hours,
        scaling_actions=len(result.actions),
        reversals=reversals(result.actions),
        killed_requests=sum(r.outcome == KILLED for r in reqs),
        timed_out_requests=sum(r.outcome in (TIMEOUT, "") for r in reqs),
        rejected_requests=sum(r.outcome == REJECTED for r in reqs),
        preemptions=sum(r.preemptions for r in reqs),
    )


def window_work(trace: Trace, gpu: GPU, window: float = 60.0) -> list[float]:
    """Seconds of one replica's GPU time each window's requests need at the least: prefill at the full
    prefill rate, and decode at the replica's peak batch throughput (plus reading their context)."""
    buckets = [0.0] * (int(trace.duration // window) + 1)
    decode_s = 1 / gpu.peak_decode_tok_s
    for t, prompt, output in trace.rows():
        # Each decode token also reads the request's context once; at the peak batch that is already in
        # peak_decode_tok_s for a 1,000-token context, so only the prompt's own prefill is added.
        buckets[int(t // window)] += prompt / gpu.prefill_tok_s + output * decode_s
    return buckets


def work_bound(trace: Trace, gpu: GPU, score_from: float, end: float, min_replicas: int = 1) -> float:
    """A true lower bound on the GPU-hours billed after ``score_from``: the work of the requests that
    arrive then, each replica doing at most its peak prefill and batch-decode rates, and at least
    ``min_replicas`` running all along. (Per-window bounds are not bounds: work can wait for a quieter
    window.)"""
    decode_s = 1 / gpu.peak_decode_tok_s
    work = sum(
        prompt / gpu.prefill_tok_s + output * decode_s
        for t, prompt, output in trace.rows()
        if t >= score_from
    )
    return max(work, min_replicas * max(0.0, end - score_from)) / 3600


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def fmt(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "n/a"
        half = (self.high - self.low) / 2
        return f"{self.mean:.{digits}f} ± {half:.{digits}f}"


# Two-sided 95% Student t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: Sequence[float]) -> Interval:
    """Mean with a 95% confidence interval (Student t over the seeds)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return Interval(math.nan, math.nan, math.nan)
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return Interval(mean, mean, mean)
    half = _T95.get(len(clean) - 1, 1.96) * statistics.stdev(clean) / math.sqrt(len(clean))
    return Interval(mean, mean - half, mean + half)
