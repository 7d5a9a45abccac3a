"""One replica's engine step time, from the GPU table as a prior and learned from what vLLM exports.

The model (the simulator's functional form; llm-d's variant autoscaler fits the same family):

    step seconds = floor + per_seq x running + prefill_tokens / prefill_rate + per_context x context

where ``running`` is the batch, ``prefill_tokens`` the prompt tokens computed in the step and
``context`` the KV tokens its decoding requests read. The parameters are a vector
``theta = (floor, per_seq, 1 / prefill_rate, per_context)``.

What a window of vLLM's exports gives (increases of counters and histograms over the window):

- ``vllm:inter_token_latency_seconds`` sum and count: each decode token reports the step it came in,
  so sum / count is the mean step time weighted by the decoding batch;
- ``vllm:iteration_tokens_total`` count and sum: the steps, and the tokens they computed (prefill
  and decode); minus the decode tokens, the prefill tokens per step;
- ``vllm:kv_cache_usage_perc`` (sampled) times the cache's size: the context tokens its requests read.

The batch is the decode tokens per step (exact over the window); ``vllm:num_requests_running``
(sampled) stands in where a vLLM does not count its steps.

One window is one linear observation ``y = theta . x``. A recursive least-squares fit with forgetting
(``FORGET`` per window) moves ``theta`` from the prior, and a gate on the normalised innovation
rejects windows the model cannot explain (a restart, a transient after a scale-up) instead of letting
them drag it; the rejections are counted, so that a real change (a different card) shows as a run of
them and resets the fit to the prior with wider doubt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

FORGET = 0.98  # per window: evidence fades with a time constant of ~50 windows
GATE = 3.0  # a window more than this many standard deviations off is rejected...
GATE_AFTER = 10  # ...once the fit has taken this many (a fresh fit trusts what it sees)...
RESET_AFTER = 5  # ...and this many rejected in a row mean the replica changed: start again
PRIOR_SPREAD = 0.3  # the prior's standard deviation, a share of each parameter (the table is that far off)
NOISE = 0.05  # a window's relative measurement noise (sampled gauges, rounding of averages)


@dataclass(frozen=True)
class StepModel:
    """Seconds of one engine step: ``floor + per_seq x n + prefill / prefill_rate + per_context x ctx``."""

    floor_s: float
    per_seq_s: float
    prefill_tok_s: float
    per_context_s: float

    def step_seconds(self, running: float, prefill_tokens: float, context_tokens: float) -> float:
        return (
            self.floor_s
            + self.per_seq_s * running
            + prefill_tokens / self.prefill_tok_s
            + self.per_context_s * context_tokens
        )

    @property
    def theta(self) -> tuple[float, float, float, float]:
        return (self.floor_s, self.per_seq_s, 1.0 / self.prefill_tok_s, self.per_context_s)

    @staticmethod
    def of(theta: Sequence[float]) -> StepModel:
        floor, per_seq, inverse_rate, per_context = (max(v, 1e-12) for v in theta)
        return StepModel(floor, per_seq, 1.0 / inverse_rate, per_context)

    def prefill_seconds(self, prompt_tokens: float) -> float:
        """A replica's time computing a prompt (spread over the steps its chunks go in)."""
        return prompt_tokens / self.prefill_tok_s

    def decode_seconds(self, output_tokens: float, context_per_seq: float) -> float:
        """A replica's time a request's decoding adds to the steps it rides in (its own sequence's cost
        and the context it reads; the step's floor is shared by the batch)."""
        return output_tokens * (self.per_seq_s + self.per_context_s * context_per_seq)


@dataclass(frozen=True)
class Window:
    """What one replica did over a window, from vLLM's exports (see the module's docstring)."""

    decode_tokens: float  # inter-token latency observations
    decode_seconds: float  # their sum
    steps: float  # iteration_tokens_total count
    step_tokens: float  # iteration_tokens_total sum
    running: float  # mean batch (sampled)
    context_tokens: float  # KV tokens in use (sampled)

    def observation(self) -> tuple[tuple[float, float, float, float], float] | None:
        """``(x, y)`` for the fit: the batch-weighted mean step time and what it was made of; None when
        the window says too little (no decoding, nothing finite)."""
        values = (
            self.decode_tokens,
            self.decode_seconds,
            self.steps,
            self.step_tokens,
            self.running,
            self.context_tokens,
        )
        if not all(math.isfinite(v) and v >= 0 for v in values):
            return None
        if self.decode_tokens < 1 or self.steps < 1 or self.running <= 0 or self.decode_seconds <= 0:
            return None
        prefill_per_step = max(0.0, self.step_tokens - self.decode_tokens) / self.steps
        # The batch: decode tokens per step, from the counters (exact over the window); the sampled
        # gauge only where a vLLM does not count steps.
        batch = self.decode_tokens / self.steps if self.step_tokens > 0 else self.running
        x = (1.0, batch, prefill_per_step, self.context_tokens)
        return x, self.decode_seconds / self.decode_tokens


@dataclass(frozen=True)
class Fit:
    """The recursive least-squares state: the estimate, its covariance (row-major 4 x 4), and how the
    last windows went. Frozen and made of floats: it goes into the service's status as it is."""

    theta: tuple[float, ...]
    covariance: tuple[float, ...]
    windows: int = 0  # accepted
    rejected: int = 0  # in a row
    prior: tuple[float, ...] = ()

    @staticmethod
    def start(prior: StepModel, spread: float = PRIOR_SPREAD) -> Fit:
        theta = prior.theta
        cov = [0.0] * 16
        for i, v in enumerate(theta):
            cov[i * 5] = (spread * v) ** 2
        return Fit(theta, tuple(cov), prior=theta)

    @property
    def model(self) -> StepModel:
        return StepModel.of(self.theta)

    def spread(self) -> tuple[float, ...]:
        """Each parameter's standard deviation, as a share of its value (how sure the fit is)."""
        return tuple(
            math.sqrt(max(self.covariance[i * 5], 0.0)) / abs(v) if v else math.inf
            for i, v in enumerate(self.theta)
        )

    def update(self, window: Window, forget: float = FORGET) -> Fit:
        """One window folded in; rejected (and counted) when its innovation is beyond ``GATE``."""
        observed = window.observation()
        if observed is None:
            return self
        x, y = observed
        theta, p = list(self.theta), [list(self.covariance[i * 4 : i * 4 + 4]) for i in range(4)]
        px = [sum(p[i][j] * x[j] for j in range(4)) for i in range(4)]
        noise = (NOISE * y) ** 2
        s = sum(x[i] * px[i] for i in range(4)) + noise  # the innovation's variance
        innovation = y - sum(t * xi for t, xi in zip(theta, x, strict=True))
        if self.windows >= GATE_AFTER and innovation * innovation > GATE * GATE * s:
            if self.rejected + 1 >= RESET_AFTER and self.prior:
                return Fit.start(StepModel.of(self.prior), 2 * PRIOR_SPREAD)
            return replace(self, rejected=self.rejected + 1)
        gain = [v / s for v in px]
        theta = [max(t + g * innovation, 1e-12) for t, g in zip(theta, gain, strict=True)]
        p = [[(p[i][j] - gain[i] * px[j]) / forget for j in range(4)] for i in range(4)]
        # Forgetting inflates the doubt; never beyond the prior's (a quiet service forgets nothing).
        ceiling = Fit.start(StepModel.of(self.prior or self.theta)).covariance if self.prior else None
        flat = [p[i][j] for i in range(4) for j in range(4)]
        if ceiling is not None:
            for i in range(4):
                k = i * 5
                if flat[k] > ceiling[k]:
                    scale = ceiling[k] / flat[k]
                    for j in range(4):
                        flat[i * 4 + j] *= math.sqrt(scale)
                        flat[j * 4 + i] *= math.sqrt(scale)
        return Fit(tuple(theta), tuple(flat), self.windows + 1, 0, self.prior)
