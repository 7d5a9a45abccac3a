"""Time to first token at any fleet size, from the step model and the traffic's mix.

A request's first token comes after its wait in the replica's prefill queue (:mod:`.queueing`) and its
own prefill, at the rate the batch's decoding leaves (the prompt sizes taken as exponential about their
mean). The level is corrected elsewhere (:mod:`.sizing`: a factor on the load, learned from the
windows; a ratio of observed to predicted quantiles was tried first and dropped: the prompts' own
prefill, which no fleet size changes, dominates a p99 at light load and inflated it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qwen_operator.perf.queueing import RANDOM, Load, bisect, first_token_quantile, wait_quantile
from qwen_operator.perf.stepmodel import StepModel

OWN_PREFILL_SHARE = 0.75  # a bound the mean prompt's own prefill eats more of is judged on the wait


@dataclass(frozen=True)
class Mix:
    """What the service is asked: requests per second, their mean prompt and output (tokens), the
    squared coefficients of variation of arrivals and prompt sizes, and the share of the prompts'
    tokens the replicas' prefix caches hold (shared system prompts: read from the cache, not
    computed; they still count in the context a decode step reads)."""

    rate: float
    prompt: float
    output: float
    ca2: float = 1.0
    cs2: float = 1.0
    cached: float = 0.0

    @property
    def computed_prompt(self) -> float:
        """The mean prompt tokens a replica computes (those its prefix cache does not hold)."""
        return self.prompt * (1.0 - min(max(self.cached, 0.0), 1.0))

    def load(self, model: StepModel) -> Load:
        context = self.prompt + self.output / 2  # a decoding request's mean context
        return Load(
            self.rate,
            model.prefill_seconds(self.computed_prompt),
            model.decode_seconds(self.output, context),
            self.ca2,
            self.cs2,
        )

    def at(self, rate: float) -> Mix:
        return replace(self, rate=rate)


def ttft_quantile(model: StepModel, mix: Mix, replicas: int, share: float, routing: str = RANDOM) -> float:
    """The first-token time exceeded by ``share`` of requests at ``replicas`` (inf when they cannot keep
    up): the wait plus the request's own prefill at the rate decoding leaves (queueing.first_token_beyond)."""
    return first_token_quantile(mix.load(model), replicas, share, routing)


def budget(model: StepModel, mix: Mix, bound: float) -> tuple[str, float]:
    """What the bound is judged on: ("ttft", bound), or, where the mean prompt's own prefill takes
    most of it (long prompts: more replicas would not make it shorter), ("wait", the wait allowed)."""
    own = model.prefill_seconds(mix.computed_prompt)
    if own > OWN_PREFILL_SHARE * bound:
        return "wait", (1 - OWN_PREFILL_SHARE) * bound
    return "ttft", bound


def predicted(model: StepModel, mix: Mix, replicas: int, share: float, bound: float, routing: str) -> float:
    """The predicted figure the bound is compared with (see :func:`budget`)."""
    kind, _ = budget(model, mix, bound)
    if kind == "wait":
        return wait_quantile(mix.load(model), replicas, share, routing)
    return ttft_quantile(model, mix, replicas, share, routing)


def most_rate(
    model: StepModel,
    mix: Mix,
    replicas: int,
    bound: float,
    share: float,
    routing: str = RANDOM,
    correction: float = 1.0,
) -> float:
    """The most requests per second ``replicas`` serve with ``correction`` x the predicted quantile
    within the bound (0 when not even one request alone does)."""
    _, allowed = budget(model, mix, bound)
    if correction * predicted(model, mix.at(1e-9), replicas, share, bound, routing) > allowed:
        return 0.0
    per_request = mix.load(model)
    saturation = replicas / max(per_request.prefill + per_request.decode, 1e-12)

    def within(rate: float) -> bool:
        return correction * predicted(model, mix.at(rate), replicas, share, bound, routing) <= allowed

    return bisect(0.0, saturation, within, 50)[0]
