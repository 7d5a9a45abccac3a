"""Where a policy's SLO attainment crosses the goal along its main knob, and what it costs there.

A verdict between two policies must compare what each costs *at* the SLO. Reading a grid's cheapest
point that still meets the goal gives an upper bound when every point meets it (the knob was never set
loose enough), and nothing when none does. So for each policy and seed the search:

1. measures the tuning grid's levels of the main knob (the other knobs as tuned);
2. widens the range, a level at a time, while every point meets the goal (looser) or none does
   (tighter), up to ``WIDEN`` levels each way;
3. bisects every bracket (a point that meets next to a looser one that misses) ``BISECT`` times;
4. reads the GPU-hours at the crossing by linear interpolation in attainment between the two points of
   the narrowest bracket, and keeps the cheapest crossing (a curve need not be monotone).

No bracket after widening: the policy did not cross, and a comparison with it is inconclusive.
Pure: ``measure(knob)`` runs the simulation; the search only chooses where.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WIDEN = 2  # levels tried beyond the grid at either end
BISECT = 2  # halvings of each bracket


@dataclass(frozen=True)
class Knob:
    """A policy's main knob: its name, which way is looser (cheaper), and the values it may take."""

    name: str
    looser_is_higher: bool = True
    low: float = 0.0  # the knob's own limits (a step rule's high mark must stay in (low mark, 1))
    high: float = math.inf
    geometric: bool = True  # levels spaced by a ratio (targets) or by a difference (fractions)

    def between(self, a: float, b: float) -> float:
        return math.sqrt(a * b) if self.geometric and a > 0 and b > 0 else (a + b) / 2

    def beyond(self, edge: float, inner: float) -> float | None:
        """The next level past ``edge``, away from ``inner`` (its neighbour), or None past the limits."""
        if self.geometric and edge > 0 and inner > 0:
            value = edge * edge / inner
        else:
            value = 2 * edge - inner
        if self.low < value < self.high:
            return value
        # Halfway to the limit, while that is still a real step.
        limit = self.high if value >= self.high else self.low
        value = (edge + limit) / 2
        return value if abs(value - edge) > 1e-3 * max(1.0, abs(edge)) else None


@dataclass(frozen=True)
class Point:
    knob: float
    gpu_hours: float
    attainment: float


@dataclass
class Crossing:
    """The outcome of a search: every point measured, and the crossing (None if there was none)."""

    points: list[Point] = field(default_factory=list)
    gpu_hours: float = math.nan
    knob: float = math.nan
    bracket: tuple[float, float] | None = None  # (meets, misses) knob values around the crossing
    why: str = ""  # when there is no crossing: what the search saw

    @property
    def crossed(self) -> bool:
        return self.bracket is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "crossed": self.crossed,
            "gpu_hours": self.gpu_hours,
            "knob": self.knob,
            "bracket": list(self.bracket) if self.bracket else None,
            "why": self.why,
            "points": [p.__dict__ for p in sorted(self.points, key=lambda p: p.knob)],
        }


def _ordered(points: Sequence[Point], knob: Knob) -> list[Point]:
    """Tightest (dearest) first."""
    return sorted(points, key=lambda p: p.knob, reverse=not knob.looser_is_higher)


def brackets(points: Sequence[Point], knob: Knob, goal: float) -> list[tuple[Point, Point]]:
    """Adjacent pairs (tighter point that meets, next looser point that misses)."""
    ordered = _ordered(points, knob)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if a.attainment >= goal > b.attainment]


def cost_at(meets: Point, misses: Point, goal: float) -> float:
    """GPU-hours where the line between the two points crosses the goal."""
    span = meets.attainment - misses.attainment
    share = (goal - misses.attainment) / span if span > 0 else 0.0
    return misses.gpu_hours + share * (meets.gpu_hours - misses.gpu_hours)


def search(
    grid: Sequence[float],
    knob: Knob,
    measure: Callable[[float], tuple[float, float]],
    goal: float,
    widen: int = WIDEN,
    bisect: int = BISECT,
) -> Crossing:
    """The cheapest crossing of ``goal`` along ``knob`` (see the module's docstring)."""
    seen: dict[float, Point] = {}

    def at(value: float) -> Point:
        key = round(value, 6)
        if key not in seen:
            gpu_hours, attainment = measure(value)
            seen[key] = Point(value, gpu_hours, attainment)
        return seen[key]

    for value in grid:
        at(value)
    for _ in range(widen):
        ordered = _ordered(list(seen.values()), knob)
        if all(p.attainment >= goal for p in ordered):  # never missed: try looser
            edge, inner = ordered[-1], ordered[-2]
        elif all(p.attainment < goal for p in ordered):  # never met: try tighter
            edge, inner = ordered[0], ordered[1]
        else:
            break
        nxt = knob.beyond(edge.knob, inner.knob)
        if nxt is None:
            break
        at(nxt)
    found = brackets(list(seen.values()), knob, goal)
    if not found:
        ordered = _ordered(list(seen.values()), knob)
        always = all(p.attainment >= goal for p in ordered)
        level = ordered[-1 if always else 0].knob
        why = (
            f"met the SLO at every setting, up to {knob.name}={level:g}"
            if always
            else f"missed the SLO at every setting, down to {knob.name}={level:g}"
        )
        return Crossing(list(seen.values()), why=why)
    narrowed: list[tuple[Point, Point]] = []
    for meets, misses in found:
        for _ in range(bisect):
            middle = at(knob.between(meets.knob, misses.knob))
            if middle.attainment >= goal:
                meets = middle
            else:
                misses = middle
        narrowed.append((meets, misses))
    meets, misses = min(narrowed, key=lambda pair: cost_at(pair[0], pair[1], goal))
    crossing_knob = (
        misses.knob
        + (goal - misses.attainment) / (meets.attainment - misses.attainment) * (meets.knob - misses.knob)
        if meets.attainment > misses.attainment
        else meets.knob
    )
    return Crossing(
        list(seen.values()), cost_at(meets, misses, goal), crossing_knob, (meets.knob, misses.knob)
    )
