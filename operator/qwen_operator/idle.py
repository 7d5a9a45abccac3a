"""Scale to zero (pure): when a service behind the router may sleep, and when it must wake.

- **Activity** is what the router and the pods report: requests held at the router, requests at the
  pods, or the router's arrivals counter having grown since the last evaluation. The end of each idle
  gap (activity after at least ``MIN_IDLE_SECONDS`` of none) is remembered (the last ``MAX_GAPS``).
- **Sleep** (a rent-or-buy choice): keeping a replica through an idle gap costs its GPU for the gap;
  going to zero costs the next request a cold start. So the service goes to zero only once it has been
  idle ``MIN_IDLE_SECONDS`` and the gap is expected to outlast a cold start: among the past gaps at
  least as long as this one so far (``MIN_HISTORY`` of them), the median of how much longer they
  lasted must exceed the measured cold start. With fewer such gaps there is no expectation to go by,
  and it sleeps after idling as long as a cold start takes (the break-even rule of ski rental: never
  more than twice the cost of the best choice in hindsight).
- **Wake**: at zero, a request held at the router (or any activity) brings one replica back at once,
  and so does a router that cannot be read (a request may be waiting where nobody sees it).

No I/O and no clock: ``now`` is passed in.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

MIN_IDLE_SECONDS = 60.0  # never to zero sooner after a request
MAX_GAPS = 32
MIN_HISTORY = 3
DEFAULT_COLD_START_SECONDS = 300.0  # before any pod of the service was seen to start


@dataclass(frozen=True)
class RouterSample:
    """What the service's router pods report now, summed over them (``error``: none could be read)."""

    waiting: float = 0.0  # requests held for a ready pod
    in_flight: float = 0.0  # requests at the pods
    arrivals: float = 0.0  # requests arrived (a counter)
    routers: int = 0  # router pods that answered
    error: str | None = None


@dataclass(frozen=True)
class IdleState:
    last_request: datetime | None = None  # the last evaluation that saw activity
    arrivals: float | None = None  # the router's arrivals counter at its last reading ...
    arrivals_at: datetime | None = None  # ... and when (in memory only: a restart starts afresh)
    gaps: tuple[float, ...] = ()  # past idle gaps, seconds, oldest first
    dispersion: float = 1.0  # of the counter's increments (qwen_operator.surge), in memory only


def active(router: RouterSample, pods_busy: float, arrivals_before: float | None) -> bool:
    """Whether there is traffic now: held or running requests, or arrivals since the last reading (a
    counter that went down was reset: what it counts now is new)."""
    if router.waiting > 0 or router.in_flight > 0 or pods_busy > 0:
        return True
    if arrivals_before is None:
        return False
    return router.arrivals > arrivals_before or (router.arrivals < arrivals_before and router.arrivals > 0)


def track(
    state: IdleState, router: RouterSample | None, pods_busy: float, now: datetime, first: bool
) -> IdleState:
    """The idle state after this evaluation. ``first``: the first evaluation since the operator started
    (a restart): idleness counts from now, never from a time the status kept (it never sleeps early)."""
    if router is None or router.error is not None:
        return state
    if first or state.last_request is None:
        return IdleState(now, router.arrivals, now, state.gaps, state.dispersion)
    if not active(router, pods_busy, state.arrivals):
        return replace(state, arrivals=router.arrivals, arrivals_at=now)
    gap = (now - state.last_request).total_seconds()
    gaps = state.gaps
    if gap >= MIN_IDLE_SECONDS:
        gaps = (*gaps, gap)[-MAX_GAPS:]
    return IdleState(now, router.arrivals, now, gaps, state.dispersion)


@dataclass(frozen=True)
class Sleep:
    """Whether to go to zero now, and why in words."""

    ok: bool
    message: str
    expected_idle_seconds: float | None = None  # how much longer this gap is expected to last


def _s(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds:.0f} s"


def may_sleep(
    idle_seconds: float, gaps: Sequence[float], cold_start: float, fixed: float | None = None
) -> Sleep:
    """Whether a service idle for ``idle_seconds`` should go to zero (see the module's docstring;
    ``fixed``: the user's own idle time instead, ``zeroAfterIdleSeconds``)."""
    if fixed is not None:
        if idle_seconds >= fixed:
            return Sleep(True, f"idle {_s(idle_seconds)}, zeroAfterIdleSeconds {fixed:g}")
        return Sleep(False, f"idle {_s(idle_seconds)}; to zero at {fixed:g} s (zeroAfterIdleSeconds)")
    if idle_seconds < MIN_IDLE_SECONDS:
        return Sleep(False, f"idle {_s(idle_seconds)}, to zero after {_s(MIN_IDLE_SECONDS)} at least")
    remaining = expected_remaining(idle_seconds, gaps)
    if remaining is not None:
        how = (
            f"idle {_s(idle_seconds)}; of the past gaps this long, half lasted {_s(remaining)} more, "
            f"against a {_s(cold_start)} cold start"
        )
        return Sleep(remaining > cold_start, how, remaining)
    how = f"idle {_s(idle_seconds)}, as long as a {_s(cold_start)} cold start"
    if idle_seconds >= cold_start:
        return Sleep(True, how + " (too few past gaps this long to expect more)")
    return Sleep(False, f"idle {_s(idle_seconds)}; to zero at {_s(cold_start)}, a cold start's length")


def expected_remaining(idle_seconds: float, gaps: Sequence[float]) -> float | None:
    """How much longer a gap idle ``idle_seconds`` so far is expected to last: the median of what the
    past gaps at least this long lasted beyond it; None with fewer than ``MIN_HISTORY`` of them."""
    longer = [g - idle_seconds for g in gaps if g > idle_seconds]
    return float(statistics.median(longer)) if len(longer) >= MIN_HISTORY else None


def cold_start_seconds(recent: Sequence[float], remembered: float | None) -> float:
    """The cold start to weigh: the median of the service's recent pods' starts, else the one the
    scaler remembers, else a cautious default."""
    if recent:
        return float(statistics.median(recent))
    return remembered if remembered is not None and remembered > 0 else DEFAULT_COLD_START_SECONDS
