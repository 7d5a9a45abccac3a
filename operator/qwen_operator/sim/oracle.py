"""The oracle's achievable bound: a clairvoyant schedule built from static fleets, then simulated.

For every 60 s window it takes the fewest replicas whose static fleet served that window's requests
within the SLO (at least ``goal`` of them), and asks for them one cold start (the 95th percentile)
ahead, so they are warm when the window starts; pods are billed from launch like any other. When the
simulated schedule misses the SLO overall, the per-window goal is raised (``WINDOW_GOALS``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qwen_operator.sim.cluster import Result
from qwen_operator.sim.engine import DONE
from qwen_operator.sim.policies import Schedule
from qwen_operator.sim.score import TtftTarget

WINDOW = 60.0
# Per-window goals tried in turn until the simulated schedule meets the SLO overall.
WINDOW_GOALS = (0.99, 0.995, 0.999, 1.0)


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
