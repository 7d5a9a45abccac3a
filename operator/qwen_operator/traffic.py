"""What a pod served over a recent window: token and request counts, and latency histograms.

vLLM exports cumulative counters (``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
``vllm:request_success_total``) and histograms (``vllm:time_to_first_token_seconds``,
``vllm:request_queue_time_seconds``, ``vllm:request_time_per_output_token_seconds``). The Prometheus
source asks for their ``increase`` over a window; the pods source subtracts two scrapes. Either way the
result is a :class:`Traffic` per pod, which the scaler sums per service. Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INF = math.inf
# The window the Prometheus source takes increases over (the pods source: the time between scrapes).
TRAFFIC_WINDOW = "1m"
TRAFFIC_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts, ``(upper bound, count)`` sorted by bound, ``+Inf`` last, as Prometheus
    histograms are exported (or their increase over a window)."""

    buckets: tuple[tuple[float, float], ...] = ()

    @staticmethod
    def of(buckets: Mapping[float, float] | Iterable[tuple[float, float]]) -> Histogram:
        items = buckets.items() if isinstance(buckets, Mapping) else buckets
        return Histogram(tuple(sorted((float(le), float(n)) for le, n in items)))

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets and self.buckets[-1][0] == INF else 0.0

    def valid(self) -> bool:
        """Finite, non-negative, cumulative (never decreasing), with a ``+Inf`` bucket."""
        if not self.buckets or self.buckets[-1][0] != INF:
            return False
        counts = [n for _, n in self.buckets]
        return all(math.isfinite(n) and n >= 0 for n in counts) and all(
            a <= b + 1e-9 for a, b in itertools.pairwise(counts)
        )

    def share_within(self, bound: float) -> float | None:
        """The share of observations at or below ``bound``: linear inside the bucket that holds it, as
        PromQL's ``histogram_quantile`` assumes. None without observations."""
        total = self.count
        if total <= 0:
            return None
        below_le, below_n = 0.0, 0.0
        for le, n in self.buckets:
            if bound < le:
                if le == INF:
                    return below_n / total  # beyond the last finite bound: counted as over
                inside = (bound - below_le) / (le - below_le)
                return (below_n + inside * (n - below_n)) / total
            below_le, below_n = le, n
        return 1.0

    def share_within_tail(self, bound: float) -> float | None:
        """The share of observations at or below ``bound``, the tail inside its bucket taken to fall off
        as it did across the bucket below (exponentially): latencies crowd at the low end of a wide
        bucket, which the linear interpolation of :meth:`share_within` spreads evenly. Kept between
        that (the fewest within) and :meth:`share_by_bucket` (the most); linear where the bucket below
        shows no fall."""
        total = self.count
        linear = self.share_within(bound)
        if total <= 0 or linear is None:
            return None
        for j, (le, n) in enumerate(self.buckets):
            if bound == le:
                return n / total
            if bound < le:
                if le == INF or j == 0:
                    return linear  # no finite bucket to extrapolate into, or none below to learn from
                lo, n1 = self.buckets[j - 1]
                lo2, n2 = self.buckets[j - 2] if j >= 2 else (0.0, 0.0)
                over1, over2 = (total - n1) / total, (total - n2) / total  # shares above lo and lo2
                if over1 <= 0 or over2 <= over1 or lo <= lo2:
                    return linear
                fall = math.log(over2 / over1) / (lo - lo2)
                tail = 1 - over1 * math.exp(-fall * (bound - lo))
                return min(max(tail, linear), n / total)
        return linear

    def share_by_bucket(self, bound: float) -> float | None:
        """The share of observations in the buckets up to the first bound at or above ``bound``: an
        upper estimate of :meth:`share_within` that assumes nothing inside a bucket."""
        total = self.count
        if total <= 0:
            return None
        return next((n / total for le, n in self.buckets if le >= bound), 1.0)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0-1) as ``histogram_quantile`` computes it; None without observations."""
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        below_le, below_n = 0.0, 0.0
        for le, n in self.buckets:
            if n >= rank:
                if le == INF:
                    return below_le  # Prometheus answers the highest finite bound
                if n == below_n:
                    return le
                return below_le + (le - below_le) * (rank - below_n) / (n - below_n)
            below_le, below_n = le, n
        return below_le

    def minus(self, earlier: Histogram) -> Histogram | None:
        """The increase since ``earlier``; None when a count fell (the process restarted) or the
        buckets differ."""
        if [le for le, _ in self.buckets] != [le for le, _ in earlier.buckets]:
            return None
        out = []
        for (le, now), (_, then) in zip(self.buckets, earlier.buckets, strict=True):
            if now < then:
                return None
            out.append((le, now - then))
        return Histogram(tuple(out))

    def plus(self, other: Histogram) -> Histogram:
        """Two histograms with the same buckets added (one with no buckets adds nothing)."""
        if not self.buckets:
            return other
        if not other.buckets:
            return self
        if [le for le, _ in self.buckets] != [le for le, _ in other.buckets]:
            raise ValueError("histograms with different buckets")
        return Histogram(
            tuple((le, a + b) for (le, a), (_, b) in zip(self.buckets, other.buckets, strict=True))
        )


@dataclass(frozen=True)
class EngineTotals:
    """What vLLM counts of its engine: ``vllm:inter_token_latency_seconds`` (sum and count: each decode
    token's step), ``vllm:iteration_tokens_total`` (count and sum: the steps and the tokens they
    computed), and the prefix cache's ``vllm:prefix_cache_queries_total`` and
    ``vllm:prefix_cache_hits_total`` (prompt tokens looked up, and those found cached, which the
    engine does not compute again). Zero where a vLLM does not export them."""

    decode_seconds: float = 0.0
    decode_tokens: float = 0.0
    steps: float = 0.0
    step_tokens: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0

    @property
    def cached_share(self) -> float:
        """The share of the prompt tokens looked up that the prefix cache held (0 without lookups)."""
        if self.prefix_queries <= 0:
            return 0.0
        return min(max(self.prefix_hits / self.prefix_queries, 0.0), 1.0)

    def _values(self) -> tuple[float, ...]:
        return (
            self.decode_seconds,
            self.decode_tokens,
            self.steps,
            self.step_tokens,
            self.prefix_queries,
            self.prefix_hits,
        )

    def minus(self, earlier: EngineTotals) -> EngineTotals:
        """The increase since ``earlier``; zero (unknown) when a count fell or is not finite."""
        parts = tuple(a - b for a, b in zip(self._values(), earlier._values(), strict=True))
        if any(not math.isfinite(v) or v < 0 for v in parts):
            return EngineTotals()
        return EngineTotals(*parts)

    def plus(self, other: EngineTotals, scale: float = 1.0) -> EngineTotals:
        return EngineTotals(*(a + scale * b for a, b in zip(self._values(), other._values(), strict=True)))


@dataclass(frozen=True)
class Totals:
    """One pod's cumulative counters at one scrape (the pods source keeps the previous one)."""

    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    requests: float = 0.0  # finished, any reason
    ttft: Histogram = Histogram()
    queue_time: Histogram = Histogram()
    tpot: Histogram = Histogram()  # per finished request: its mean time between output tokens
    engine: EngineTotals = field(default_factory=lambda: EngineTotals())

    def since(self, earlier: Totals, seconds: float) -> Traffic | None:
        """What was served between ``earlier`` and this scrape; None after a counter reset."""
        counts = (
            self.prompt_tokens - earlier.prompt_tokens,
            self.generation_tokens - earlier.generation_tokens,
            self.requests - earlier.requests,
        )
        if seconds <= 0 or any(not math.isfinite(c) or c < 0 for c in counts):
            return None
        engine = self.engine.minus(earlier.engine)
        ttft = self.ttft.minus(earlier.ttft) if self.ttft.buckets else Histogram()
        queue = self.queue_time.minus(earlier.queue_time) if self.queue_time.buckets else Histogram()
        tpot = self.tpot.minus(earlier.tpot) if self.tpot.buckets else Histogram()
        if ttft is None or queue is None or tpot is None:
            return None
        return Traffic(seconds, *counts, ttft=ttft, queue_time=queue, tpot=tpot, engine=engine)


@dataclass(frozen=True)
class Traffic:
    """What one pod (or, summed, a service) served over ``seconds``."""

    seconds: float
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    requests: float = 0.0
    ttft: Histogram = Histogram()
    queue_time: Histogram = Histogram()
    tpot: Histogram = Histogram()  # per finished request: its mean time between output tokens
    engine: EngineTotals = field(default_factory=lambda: EngineTotals())

    def usable(self) -> bool:
        counts = (self.seconds, self.prompt_tokens, self.generation_tokens, self.requests)
        return (
            all(math.isfinite(c) and c >= 0 for c in counts)
            and self.seconds > 0
            and all(h.valid() for h in (self.ttft, self.queue_time, self.tpot) if h.buckets)
        )

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.seconds

    @property
    def generation_tokens_per_second(self) -> float:
        return self.generation_tokens / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


def combine(parts: Iterable[Traffic]) -> Traffic | None:
    """A service's traffic: its pods' summed, as rates over their longest window (a pod observed over a
    shorter one counts at its rate). None without any usable part."""
    parts = [p for p in parts if p.usable()]
    if not parts:
        return None
    seconds = max(p.seconds for p in parts)
    scaled = [(p, seconds / p.seconds) for p in parts]
    prompt = sum(p.prompt_tokens * k for p, k in scaled)
    generation = sum(p.generation_tokens * k for p, k in scaled)
    requests = sum(p.requests * k for p, k in scaled)
    engine = EngineTotals()
    for p, k in scaled:
        engine = engine.plus(p.engine, k)
    ttft, queue, tpot = Histogram(), Histogram(), Histogram()
    try:
        for p in parts:
            ttft, queue, tpot = ttft.plus(p.ttft), queue.plus(p.queue_time), tpot.plus(p.tpot)
    except ValueError:  # pods with other bucket bounds (mixed vLLM versions): latency unknown
        ttft, queue, tpot = Histogram(), Histogram(), Histogram()
    return Traffic(
        seconds, prompt, generation, requests, ttft=ttft, queue_time=queue, tpot=tpot, engine=engine
    )
