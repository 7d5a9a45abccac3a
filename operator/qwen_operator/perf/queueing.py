"""The queue-time tail of a fleet: what share of requests would wait longer than a bound at N replicas.

vLLM batches decoding: a request does not wait for others' outputs, only for the prefill in front of
it. So a replica's queue is its prefill, served at the prefill rate left over by the decode work of the
batch: with ``lam`` requests per second on a replica, each bringing ``prefill`` seconds of prompt and
``decode`` seconds of its share of decode steps (``StepModel``), decoding takes ``rho_d = lam x decode``
of the replica's time, the prefill server runs at ``1 - rho_d`` of its speed, and its utilisation is
``rho = lam x prefill / (1 - rho_d)`` (the replica saturates when ``rho_d + lam x prefill`` reaches
1). Arrivals and prompt sizes are not Poisson: their variability enters as squared coefficients of
variation, ``ca2`` (the index of dispersion of arrivals, measured) and ``cs2`` (of prompt sizes).

- **Behind a random Service** each replica is its own queue, fed ``lam / N`` by random splitting (which
  moves the arrivals' variability towards Poisson: ``1 + (ca2 - 1) / N``). The waiting-time tail is
  Kingman's heavy-traffic approximation for a G/G/1 queue:
  ``P(W > t) = rho exp(-2 (1 - rho) t / (E[S] (ca2 + cs2)))``.
- **Behind a least-loaded router** the replicas' prefill servers share one queue: an M/M/N's
  probability of waiting (Erlang C) and an exponential tail at the rate the spare servers drain it,
  with the Allen-Cunneen factor for G/G/N: ``P(W > t) = C(N, a) exp(-2 (N - a) t / (E[S] (ca2 + cs2)))``.

Both are approximations; what they give is the shape of the knee as N changes. The level is corrected
by the ratio of the observed to the predicted quantile at the current N (the caller's business).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

RANDOM, POOLED = "random", "pooled"


@dataclass(frozen=True)
class Load:
    """What the fleet is asked: requests per second, each bringing ``prefill`` seconds of prompt and
    ``decode`` seconds of decode work to a replica, with the variabilities of arrivals (``ca2``) and of
    prompt sizes (``cs2``)."""

    rate: float
    prefill: float
    decode: float = 0.0
    ca2: float = 1.0
    cs2: float = 1.0

    def busy(self, replicas: int) -> float:
        """A replica's busy share (prefill and decode) at ``replicas``; at or above 1 it cannot keep up."""
        return self.rate * (self.prefill + self.decode) / replicas if replicas > 0 else math.inf

    def server(self, replicas: int) -> tuple[float, float] | None:
        """The prefill server of one replica: (mean service seconds, utilisation); None when saturated."""
        if replicas <= 0 or self.busy(replicas) >= 1:
            return None
        each = self.rate / replicas
        service = self.prefill / (1 - each * self.decode)
        return service, each * service


def erlang_c(servers: int, offered: float) -> float:
    """The probability that an arrival waits in an M/M/``servers`` queue offered ``offered`` Erlangs
    (1 when it cannot keep up)."""
    if servers <= 0 or offered >= servers:
        return 1.0
    if offered <= 0:
        return 0.0
    b = 1.0  # Erlang B by its stable recursion, then C from B
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    return b / (1 - rho + rho * b)


def _tail(load: Load, replicas: int, routing: str) -> tuple[float, float, float] | None:
    """The wait's tail as ``P(W > t) = waits x exp(-decay x t)``, and the mean prefill service: (waits,
    decay, service); None when the replicas cannot keep up."""
    server = load.server(replicas)
    if server is None:
        return None
    service, rho = server
    if routing == POOLED:
        variability = max(load.ca2 + load.cs2, 1e-6) / 2
        offered = rho * replicas
        drain = (replicas - offered) / service  # the spare servers' completions per second
        return min(1.0, erlang_c(replicas, offered)), drain / variability, service
    ca2 = 1 + (load.ca2 - 1) / replicas  # one replica's share of the arrivals, split at random
    variability = max(ca2 + load.cs2, 1e-6) / 2
    return min(1.0, rho), (1 - rho) / (service * variability), service


def wait_beyond(load: Load, replicas: int, seconds: float, routing: str = RANDOM) -> float:
    """The share of requests that would wait in a queue longer than ``seconds`` at ``replicas``."""
    if load.rate <= 0 or load.prefill <= 0:
        return 0.0
    tail = _tail(load, replicas, routing)
    if tail is None:
        return 1.0
    waits, decay, _ = tail
    return waits * math.exp(-decay * seconds)


def first_token_beyond(load: Load, replicas: int, seconds: float, routing: str = RANDOM) -> float:
    """The share of requests whose wait plus own prefill exceeds ``seconds``: the prefill taken as
    exponential around its mean (prompt sizes vary about that much: cs2 near 1 on the Azure traces),
    independent of the wait, so that the sum is hypoexponential where a request waits."""
    if load.rate <= 0 or load.prefill <= 0:
        return 0.0
    tail = _tail(load, replicas, routing)
    if tail is None:
        return 1.0
    waits, decay, service = tail
    mu = 1 / service
    alone = math.exp(-mu * seconds)
    if abs(mu - decay) < 1e-9 * mu:
        both = (1 + mu * seconds) * alone  # Erlang-2
    else:
        both = (mu * math.exp(-decay * seconds) - decay * alone) / (mu - decay)
    return min(1.0, (1 - waits) * alone + waits * both)


def wait_quantile(load: Load, replicas: int, share: float, routing: str = RANDOM) -> float:
    """The waiting time exceeded by ``share`` of requests (0 when fewer wait at all; inf when the
    fleet cannot keep up)."""
    return _quantile(wait_beyond, load, replicas, share, routing)


def first_token_quantile(load: Load, replicas: int, share: float, routing: str = RANDOM) -> float:
    """The wait plus own prefill exceeded by ``share`` of requests (inf when the fleet cannot keep up)."""
    return _quantile(first_token_beyond, load, replicas, share, routing)


def _quantile(
    beyond: Callable[[Load, int, float, str], float], load: Load, replicas: int, share: float, routing: str
) -> float:
    server = load.server(replicas)
    if server is None:
        return math.inf
    if beyond(load, replicas, 0.0, routing) <= share:
        return 0.0
    hi = max(server[0], 1e-6)
    while beyond(load, replicas, hi, routing) > share:
        hi *= 2
    return bisect(0.0, hi, lambda t: beyond(load, replicas, t, routing) > share, 60)[1]


def bisect(lo: float, hi: float, below: Callable[[float], bool], steps: int) -> tuple[float, float]:
    """The bracket ``(lo, hi)`` around where a monotone ``below`` turns False, halved ``steps`` times
    (``below(lo)`` holds, ``below(hi)`` does not)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if below(mid) else (lo, mid)
    return lo, hi


def fewest_replicas(
    load: Load,
    bound: float,
    share: float,
    low: int,
    high: int,
    routing: str = RANDOM,
    correction: float = 1.0,
) -> int | None:
    """The fewest replicas in ``[low, high]`` at which no more than ``share`` of requests wait longer
    than ``bound`` (the predicted quantile times ``correction``); None when even ``high`` does not."""
    for n in range(max(low, 1), high + 1):
        if correction * wait_quantile(load, n, share, routing) <= bound:
            return n
    return None
