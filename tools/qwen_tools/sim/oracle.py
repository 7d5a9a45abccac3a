"""Clairvoyant references: schedules built from static fleets with the trace known, then simulated.

The oracle:
For every 60 s window it takes the fewest replicas whose static fleet served that window's requests
within the SLO (at least ``goal`` of them), and asks for them one cold start (the 95th percentile)
ahead, so they are warm when the window starts; pods are billed from launch like any other. When the
simulated schedule misses the SLO overall, the per-window goal is raised (``WINDOW_GOALS``).

The reference (``budget_plan``) is tighter: it does not hold every window to the goal, but spends the
run's whole allowance of missed requests (1% of them) where that saves the most replicas, then is
simulated the same way; if the simulation misses the SLO, the allowance shrinks (``BUDGET_SHARES``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qwen_tools.sim.cluster import Result
from qwen_tools.sim.engine import DONE
from qwen_tools.sim.policies import Schedule
from qwen_tools.sim.score import TtftTarget

WINDOW = 60.0
# Per-window goals tried in turn until the simulated schedule meets the SLO overall.
WINDOW_GOALS = (0.99, 0.995, 0.999, 1.0)
# Shares of the run's allowance of missed requests the reference tries in turn.
BUDGET_SHARES = (1.0, 0.7, 0.4, 0.0)


def window_attainment(
    result: Result, target: TtftTarget, windows: int, window: float = WINDOW
) -> list[float]:
    """SLO attainment of the requests arriving in each window (1.0 for a window without requests)."""
    good, total = [0] * windows, [0] * windows
    for r in result.requests:
        w = min(int(r.arrival // window), windows - 1)
        total[w] += 1
        if r.outcome == DONE and r.ttft is not None and r.ttft <= target(r):
            good[w] += 1
    return [g / t if t else 1.0 for g, t in zip(good, total, strict=True)]


def plan(statics: Mapping[int, Result], target: TtftTarget, windows: int, goal: float = 0.99) -> list[int]:
    """Per window, the fewest static replicas that met ``goal`` there (the most there are, if none did)."""
    sizes = sorted(statics)
    per_size = {n: window_attainment(statics[n], target, windows) for n in sizes}
    out = []
    for w in range(windows):
        fits = [n for n in sizes if per_size[n][w] >= goal]
        out.append(fits[0] if fits else max(sizes, key=lambda n: (per_size[n][w], -n)))
    return out


def schedule(per_window: Sequence[int], lead: float, window: float = WINDOW) -> Schedule:
    last = len(per_window) - 1

    def index(t: float) -> int:
        return max(0, min(int(t // window), last))

    def peak(start: float, end: float) -> int:
        return max(per_window[index(start) : index(end) + 1])

    return Schedule(peak, lead)


def window_misses(result: Result, target: TtftTarget, windows: int, window: float = WINDOW) -> list[int]:
    """Requests arriving in each window that missed the SLO."""
    misses = [0] * windows
    for r in result.requests:
        if not (r.outcome == DONE and r.ttft is not None and r.ttft <= target(r)):
            misses[min(int(r.arrival // window), windows - 1)] += 1
    return misses


def budget_plan(statics: Mapping[int, Result], target: TtftTarget, windows: int, allowed: float) -> list[int]:
    """Per window, replicas that spend at most ``allowed`` missed requests over the whole run where
    they save the most replica-windows (the tighter reference; ``plan`` holds every window to the goal).

    A Lagrangian relaxation of the knapsack: for a price ``lam`` per missed request, each window takes
    the size minimising ``n + lam * misses(n)``; the price is bisected to the cheapest plan whose
    misses (as the static sweep counted them) stay within ``allowed``."""
    sizes = sorted(statics)
    misses = {n: window_misses(statics[n], target, windows) for n in sizes}

    def cheapest(w: int, lam: float) -> int:
        return min(sizes, key=lambda n: (n + lam * misses[n][w], n))

    def choose(lam: float) -> tuple[list[int], int]:
        per_window = [cheapest(w, lam) for w in range(windows)]
        return per_window, sum(misses[n][w] for w, n in enumerate(per_window))

    low, high = 0.0, 1.0
    while choose(high)[1] > allowed and high < 1e6:
        high *= 2
    for _ in range(40):
        mid = (low + high) / 2
        if choose(mid)[1] > allowed:
            low = mid
        else:
            high = mid
    return choose(high)[0]
