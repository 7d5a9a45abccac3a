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

import itertools
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
        geometric = self.geometric and edge > 0 and inner > 0
        value = edge * edge / inner if geometric else 2 * edge - inner
        margin = 1e-6 * max(1.0, abs(edge))
        if self.low + margin < value < self.high - margin:
            return value
        # Halfway to the limit, while that is still a real step.
        limit = self.high if edge > inner else self.low
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
    goal: float = 0.99

    @property
    def crossed(self) -> bool:
        return self.bracket is not None

    @property
    def cheapest_meeting(self) -> float:
        """GPU-hours of the cheapest point that met the goal (an upper bound on the cost at the SLO)."""
        return min((p.gpu_hours for p in self.points if p.attainment >= self.goal), default=math.nan)

    def as_dict(self) -> dict[str, object]:
        return {
            "crossed": self.crossed,
            "cheapest_meeting": self.cheapest_meeting,
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
    return [(a, b) for a, b in itertools.pairwise(ordered) if a.attainment >= goal > b.attainment]


def cost_at(meets: Point, misses: Point, goal: float) -> float:
    """GPU-hours where the line between the two points crosses the goal."""
    span = meets.attainment - misses.attainment
    share = (goal - misses.attainment) / span if span > 0 else 0.0
    return misses.gpu_hours + share * (meets.gpu_hours - misses.gpu_hours)


class _Points:
    """The points measured so far, by knob value."""

    def __init__(self, measure: Callable[[float], tuple[float, float]]) -> None:
        self.measure = measure
        self.seen: dict[float, Point] = {}

    def at(self, value: float) -> Point:
        key = round(value, 6)
        if key not in self.seen:
            gpu_hours, attainment = self.measure(value)
            self.seen[key] = Point(value, gpu_hours, attainment)
        return self.seen[key]

    def all(self) -> list[Point]:
        return list(self.seen.values())


def _conclude(points: _Points, knob: Knob, goal: float, bisect: int) -> Crossing:
    """The cheapest bracket among the points, bisected; or why there is none."""
    found = brackets(points.all(), knob, goal)
    if not found:
        ordered = _ordered(points.all(), knob)
        always = all(p.attainment >= goal for p in ordered)
        level = ordered[-1 if always else 0].knob
        why = (
            f"met the SLO at every setting, up to {knob.name}={level:g}"
            if always
            else f"missed the SLO at every setting, down to {knob.name}={level:g}"
        )
        return Crossing(points.all(), why=why, goal=goal)
    meets, misses = min(found, key=lambda pair: cost_at(pair[0], pair[1], goal))
    for _ in range(bisect):
        middle = points.at(knob.between(meets.knob, misses.knob))
        if middle.attainment >= goal:
            meets = middle
        else:
            misses = middle
    span = meets.attainment - misses.attainment
    crossing_knob = (
        misses.knob + (goal - misses.attainment) / span * (meets.knob - misses.knob)
        if span > 0
        else meets.knob
    )
    return Crossing(
        points.all(), cost_at(meets, misses, goal), crossing_knob, (meets.knob, misses.knob), goal=goal
    )


def search(
    grid: Sequence[float],
    knob: Knob,
    measure: Callable[[float], tuple[float, float]],
    goal: float,
    widen: int = WIDEN,
    bisect: int = BISECT,
) -> Crossing:
    """The cheapest crossing of ``goal`` along ``knob``, from every level of ``grid`` (see the module's
    docstring)."""
    points = _Points(measure)
    for value in grid:
        points.at(value)
    for _ in range(widen):
        ordered = _ordered(points.all(), knob)
        if all(p.attainment >= goal for p in ordered):  # never missed: try looser
            edge, inner = ordered[-1], ordered[-2]
        elif all(p.attainment < goal for p in ordered):  # never met: try tighter
            edge, inner = ordered[0], ordered[1]
        else:
            break
        nxt = knob.beyond(edge.knob, inner.knob)
        if nxt is None:
            break
        points.at(nxt)
    return _conclude(points, knob, goal, bisect)


def walk(
    start: float,
    grid: Sequence[float],
    knob: Knob,
    measure: Callable[[float], tuple[float, float]],
    goal: float,
    widen: int = WIDEN,
    bisect: int = 1,
    lookahead: int = 1,
    near: float = 0.005,
) -> Crossing:
    """The same, for less: from ``start`` (the tuned setting) level by level along ``grid`` (then beyond
    it, up to ``widen`` levels) towards the goal: looser while it meets, tighter while it misses. Past
    the first miss, when it missed by less than ``near``, it looks ``lookahead`` levels further, and
    walks on if the curve meets again (a curve that hovers at the goal need not be monotone; one that
    fell well below it does not come back), then bisects the cheapest bracket."""
    points = _Points(measure)
    tight_first = sorted(set(grid) | {start}, reverse=not knob.looser_is_higher)

    def neighbour(value: float, step: int) -> float | None:
        """The next level ``step`` (+1 looser, -1 tighter) from ``value``: on the grid, else beyond."""
        ordered = sorted({*tight_first, *(p.knob for p in points.all())}, reverse=not knob.looser_is_higher)
        i = ordered.index(value)
        j = i + step
        if 0 <= j < len(ordered):
            return ordered[j]
        inner = ordered[i - step] if 0 <= i - step < len(ordered) else None
        return None if inner is None else knob.beyond(value, inner)

    def inside(value: float) -> bool:
        return min(tight_first) <= value <= max(tight_first)

    def beyond_grid(value: float) -> int:
        """How many levels past the grid ``value`` lies."""
        loose, tight = tight_first[-1], tight_first[0]
        past = [p for p in points.all() if (p.knob > loose if knob.looser_is_higher else p.knob < loose)]
        past += [p for p in points.all() if (p.knob < tight if knob.looser_is_higher else p.knob > tight)]
        return len(past)

    here = points.at(start)
    step = 1 if here.attainment >= goal else -1
    looked = 0
    while True:
        value = neighbour(here.knob, step)
        if value is None or (not inside(value) and beyond_grid(value) >= widen):
            break
        there = points.at(value)
        crossed = there.attainment < goal if step == 1 else there.attainment >= goal
        if not crossed:
            here = there
            continue
        if step == -1 or looked >= lookahead or there.attainment < goal - near:
            break  # a bracket: tighter, or looser and a clear miss, or already looked ahead
        looked += 1  # looser, first miss: one level more, in case the curve comes back
        ahead = neighbour(there.knob, 1)
        if ahead is None or (not inside(ahead) and beyond_grid(ahead) >= widen):
            break
        further = points.at(ahead)
        if further.attainment < goal:
            break
        here = further  # it met again: walk on from there
    return _conclude(points, knob, goal, bisect)
