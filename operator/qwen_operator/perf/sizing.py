"""SLO mode's fleet size from the performance model: the fewest replicas at which the share of first
tokens predicted later than the bound stays within the SLO's allowance.

Each evaluation, with the service's traffic over the source's window:

1. **The mix**: requests per second (first tokens, which counts requests that have not finished), the
   mean prompt and output, and the arrivals' variability (``ca2``, the caller's).
2. **The step model** (:mod:`.stepmodel`) takes the window's engine counters as one observation for
   the fleet (its replicas run one model on one card), starting from the GPU table's prior.
3. **The load factor**: how much fuller the replicas are than the model says (the arrivals'
   burstiness, what the step model leaves out). Its belief is a grid of factors, each with the
   log-likelihood (a multinomial over the histogram's buckets, fading) of what the window showed under
   the distributions the model predicts at that factor and at the fleet that served it, and a
   log-normal prior about 1: a histogram filter. Two views of the knee: vLLM's queue times
   (``request_queue_time_seconds``: the wait before a request's first chunk is scheduled), at any
   load; and, under load, the first tokens' tail from half the bound up (with chunked prefill, prompts
   also wait for each other inside the batch, which the queue time does not count). Not the first
   tokens at light load: a late one there is the prompt's own prefill, which no fleet size changes.
   Only on a settled fleet (the caller's judgement). A factor on the load, not on the predicted
   latency: the windows say where the knee is, and a multiplier on a tail that falls off
   exponentially moves nothing below the knee.
4. **The size**: the fewest replicas whose predicted misses, at the most likely factor and the load
   the caller plans for (a forecast), stay within the allowance.

Slack is information: at 6 replicas with every first token far within the bound, the model says what
5 or 4 would give, and the scaler goes there without waiting for a miss.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from qwen_operator.perf.predict import Mix
from qwen_operator.perf.queueing import RANDOM, Load, first_token_beyond, wait_beyond
from qwen_operator.perf.stepmodel import Fit, StepModel, Window
from qwen_operator.traffic import Histogram, Traffic

SIZES_FADE = 0.9  # per window: the request sizes planned for are those of the last ~10 windows
MIN_REQUESTS = 20  # first tokens in a window, at least, to say what the mix is
INFORMATIVE_BUSY = 0.3  # a replica at least this busy: its first tokens' tail says something of the load
# The shape of a step at a batch of 32 at 1,000 tokens of context, by the calibration of the GPU table
# (docs/benchmark.md): mostly the floor (reading the weights), a tenth per sequence, a tenth the context.
FLOOR_SHARE, PER_SEQ_SHARE, CONTEXT_SHARE = 0.8, 0.1, 0.1
CALIBRATION_BATCH, CALIBRATION_CONTEXT = 32, 1000


def prior(prompt_tokens_per_second: float, generation_tokens_per_second: float) -> StepModel:
    """A step model from a seed capacity: the prompt rate alone, and the generated tokens per second at
    a batch of 32 (one step at that batch takes 32 / that)."""
    step = CALIBRATION_BATCH / generation_tokens_per_second
    return StepModel(
        floor_s=FLOOR_SHARE * step,
        per_seq_s=PER_SEQ_SHARE * step / CALIBRATION_BATCH,
        prefill_tok_s=prompt_tokens_per_second,
        per_context_s=CONTEXT_SHARE * step / (CALIBRATION_BATCH * CALIBRATION_CONTEXT),
    )


# The load factor's grid, its prior and its memory (see the module's docstring).
GRID = tuple(0.5 * 8 ** (i / 24) for i in range(25))  # 0.5 to 4, 9% apart
PRIOR_SIGMA = 0.35  # of the log factor, before any window
FADE = 0.9  # per window: what the windows said fades over ~10 of them
EVIDENCE_CAP = 100  # observations a window counts as, at most (they come in bursts, not one by one)
Beyond = Callable[[Load, int, float, str], float]  # queueing's share beyond a time (wait or first token)


@dataclass(frozen=True)
class Sizing:
    """What the sizing learned: the step model's fit, and the log-likelihood of each load factor."""

    fit: Fit
    likelihood: tuple[float, ...] = (0.0,) * len(GRID)
    prompt: float | None = None  # the mean prompt and output over the last minutes (tokens)
    output: float | None = None

    @staticmethod
    def start(model: StepModel) -> Sizing:
        return Sizing(Fit.start(model))

    def explains(self) -> bool:
        """Whether the most likely load factor is inside the grid: at its edge, the model is off by
        more than the factor can say."""
        return GRID[0] < self.correction < GRID[-1]

    @property
    def correction(self) -> float:
        """The most likely load factor."""
        scores = [
            ll - math.log(c) ** 2 / (2 * PRIOR_SIGMA**2) for c, ll in zip(GRID, self.likelihood, strict=True)
        ]
        return GRID[max(range(len(GRID)), key=scores.__getitem__)]


def mix_of(traffic: Traffic, ca2: float, cs2: float = 1.0) -> Mix | None:
    """The requests the window saw; None when it saw too few to say."""
    first_tokens = traffic.ttft.count
    if first_tokens < MIN_REQUESTS:
        return None
    finished = traffic.requests if traffic.requests > 0 else first_tokens
    return Mix(
        first_tokens / traffic.seconds,
        traffic.prompt_tokens / finished,
        traffic.generation_tokens / finished,
        ca2,
        cs2,
        traffic.engine.cached_share,
    )


def miss_share(model: StepModel, mix: Mix, replicas: int, bound: float, routing: str = RANDOM) -> float:
    """The predicted share of first tokens later than ``bound`` at ``replicas``."""
    return first_token_beyond(mix.load(model), replicas, bound, routing)


def observe(
    sizing: Sizing,
    traffic: Traffic,
    mix: Mix,
    replicas: int,
    running: float,
    bound: float,
    new: float = 1.0,
    routing: str = RANDOM,
) -> Sizing:
    """``sizing`` after one window served by ``replicas`` on a settled fleet (``running``: the requests
    in their batches now, summed; ``new``: the share of the window not seen before, as windows
    overlap)."""
    steps = traffic.engine
    per_replica = running / replicas if replicas > 0 else 0.0
    window = Window(
        steps.decode_tokens,
        steps.decode_seconds,
        steps.steps,
        steps.step_tokens,
        per_replica,
        per_replica * (mix.prompt + mix.output / 2),
    )
    fit = sizing.fit.update(window)
    keep = SIZES_FADE**new
    prompt = mix.prompt if sizing.prompt is None else keep * sizing.prompt + (1 - keep) * mix.prompt
    output = mix.output if sizing.output is None else keep * sizing.output + (1 - keep) * mix.output
    sizing = replace(sizing, fit=fit, prompt=prompt, output=output)
    # Two windows onto the knee: the queue times (the wait before the first chunk is scheduled), and
    # under load the first tokens' tail from half the bound up (with chunked prefill, prompts also
    # wait for each other inside the batch, which the queue time does not show; below the tail, and
    # at light load, a first token is mostly the prompt's own prefill, which says nothing of the load).
    sources: list[tuple[list[tuple[float, float]], Beyond]] = [
        (_bucket_counts(traffic.queue_time), wait_beyond)
    ]
    if mix.load(fit.model).busy(replicas) >= INFORMATIVE_BUSY:
        sources.append((_tail_counts(traffic.ttft, bound / 2), first_token_beyond))
    scores = [0.0] * len(GRID)
    for counts, beyond in sources:
        total = sum(n for _, n in counts)
        if total < MIN_REQUESTS:
            continue
        weight = new * min(total, EVIDENCE_CAP) / total
        # Each bucket with observations: its count and its two bounds (0 below the first).
        filled = [(n, counts[j - 1][0] if j else 0.0, le) for j, (le, n) in enumerate(counts) if n > 0]
        for i, c in enumerate(GRID):
            load = mix.at(c * mix.rate).load(fit.model)

            def share_within(t: float, load: Load = load, beyond: Beyond = beyond) -> float:
                if t <= 0:
                    return 0.0
                return 1.0 if math.isinf(t) else 1.0 - beyond(load, replicas, t, routing)

            score = sum(n * math.log(max(share_within(hi) - share_within(lo), 1e-9)) for n, lo, hi in filled)
            scores[i] += weight * score
    if not any(scores):
        return sizing
    fade = FADE**new
    likelihood = [fade * ll + score for ll, score in zip(sizing.likelihood, scores, strict=True)]
    return replace(sizing, likelihood=tuple(likelihood))


def _tail_counts(histogram: Histogram, start: float) -> list[tuple[float, float]]:
    """Bucket counts with every bucket up to the largest bound at or below ``start`` in one."""
    counts = _bucket_counts(histogram)
    head = [(le, n) for le, n in counts if le <= start]
    if not head:
        return counts
    return [(head[-1][0], sum(n for _, n in head)), *counts[len(head) :]]


def _bucket_counts(histogram: Histogram) -> list[tuple[float, float]]:
    """``(upper bound, observations in the bucket)`` from cumulative counts."""
    out, before = [], 0.0
    for le, n in histogram.buckets:
        out.append((le, max(n - before, 0.0)))
        before = max(n, before)
    return out


@dataclass(frozen=True)
class Cache:
    """The KV caches now: the fullest replica's usage (0-1) at ``replicas`` serving ``rate`` requests
    per second, and the usage a replica should stay under."""

    peak: float
    replicas: int
    rate: float
    target: float

    def at(self, load: Load, now: Load, replicas: int) -> float:
        """The fullest replica's usage at ``replicas`` serving ``load``, scaled from now's (``now``: the
        load the fleet serves, at ``self.replicas``) by Little's law: a replica holds its arrival rate
        times a request's stay, and a stay is its output's steps, each ``floor / (1 - busy)`` long (the
        batch's work stretches the step), so the usage grows as ``rate / replicas / (1 - busy)``:
        faster than the load near saturation."""
        busy = load.busy(replicas)
        if busy >= 1:
            return math.inf
        if now.rate <= 0 or self.replicas <= 0:
            return self.peak
        share = (load.rate / replicas) / (now.rate / self.replicas)
        return self.peak * share * (1 - min(now.busy(self.replicas), busy)) / (1 - busy)


class Sized(NamedTuple):
    """The fewest replicas predicted to keep the SLO, the share of first tokens predicted late there,
    and where the KV caches ruled out fewer: the largest smaller size the queueing alone allowed, with
    its fullest cache's predicted usage (None when they ruled out none)."""

    replicas: int
    late: float
    cache_limited: tuple[int, float] | None = None


def fewest(
    sizing: Sizing,
    mix: Mix,
    allowance: float,
    bound: float,
    low: int,
    high: int,
    routing: str = RANDOM,
    cache: Cache | None = None,
) -> Sized | None:
    """The fewest replicas in ``[low, high]`` at which the share of first tokens predicted later than
    ``bound`` stays within ``allowance``, at the load factor believed and the larger of the window's and
    the last minutes' request sizes; None when even ``high`` does not. With ``cache`` (the KV caches
    now, at the load ``cache.rate``), a size below the fleet's is also one at which the fullest
    replica's cache is predicted to stay under its target: past it vLLM preempts, and recomputing
    costs the first tokens more than the queueing model counts."""
    prompt, output = max(mix.prompt, sizing.prompt or 0.0), max(mix.output, sizing.output or 0.0)
    planned = Mix(sizing.correction * mix.rate, prompt, output, mix.ca2, mix.cs2, mix.cached)
    load = planned.load(sizing.fit.model)
    now = replace(planned, rate=sizing.correction * cache.rate).load(sizing.fit.model) if cache else load
    limited = None
    for n in range(max(low, 1), max(high, 1) + 1):
        share = first_token_beyond(load, n, bound, routing)  # miss_share, the load computed once
        # Below the fleet now only: a cache already past its target is the verdict's and the KV
        # signal's to act on (scaling.slo, scaling.stages), not a prediction's.
        usage = cache.at(load, now, n) if cache is not None and n < cache.replicas else 0.0
        if cache is not None and usage > cache.target:
            if share <= allowance:
                limited = (n, usage)
            continue
        if share <= allowance:
            return Sized(n, share, limited)
    return None
