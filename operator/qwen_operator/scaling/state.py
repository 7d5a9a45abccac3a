"""The scaler's memory for one service (:class:`State`), and its one conversion to and from the status
(``status.autoscaling.state``, :class:`qwen_operator.api.ScalerState`), so that a restart does not
forget what the windows, cooldowns and SLO mode's model learned.

What is not persisted, and why: ``last_evaluated`` (a restart is a gap in the data), SLO mode's fleet
change and miss pool (a restart judges windows alone). Learned figures are rounded: they are for a
restart, not for precision. Which fields may be written late is said beside the model
(``api.ScalerState.WRITTEN_AT_ONCE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from qwen_operator import api, idle
from qwen_operator.perf.sizing import GRID, Sizing
from qwen_operator.perf.stepmodel import Fit
from qwen_operator.scaling.slo import PlanState


@dataclass(frozen=True)
class State:
    """What the windows and cooldowns remember. Everything but ``last_evaluated`` lives in status."""

    last_scale_time: datetime | None = None
    last_scale_up_time: datetime | None = None
    data_since: datetime | None = None
    history: tuple[tuple[datetime, int], ...] = ()  # runs of equal recommendations: (since, replicas)
    last_evaluated: datetime | None = None  # in memory only, so a restart reads as a gap in the data
    plan: PlanState = field(default_factory=PlanState)  # SLO mode: learned capacity, load, peaks, model
    idle: idle.IdleState = field(default_factory=idle.IdleState)  # with the router: requests and gaps


def to_status(state: State) -> api.ScalerState:
    """The persisted part of ``state`` (``last_scale_time`` is the status's own field)."""
    return api.ScalerState(
        last_scale_up_time=state.last_scale_up_time,
        data_since=state.data_since,
        recommendations=[api.Recommendation(since=t, replicas=r) for t, r in state.history],
        **_plan_status(state.plan),
        last_request_time=state.idle.last_request,
        router_arrivals=state.idle.arrivals,
        idle_gaps=[round(g) for g in state.idle.gaps] or None,
    )


def from_status(status: api.QwenServiceStatus) -> State:
    """The state a restart starts from (``last_evaluated`` is not persisted: a restart is a gap)."""
    state = (status.autoscaling or api.AutoscalingStatus()).state or api.ScalerState()
    return State(
        last_scale_time=status.last_scale_time,
        last_scale_up_time=state.last_scale_up_time,
        data_since=state.data_since,
        history=tuple((r.since, r.replicas) for r in state.recommendations),
        plan=PlanState(
            capacity_scale=state.capacity_scale,
            level=state.demand_level,
            trend=state.demand_trend or 0.0,
            updated=state.demand_updated,
            peaks=tuple((p.at, p.work) for p in state.demand_peaks or ()),
            cold_start_seconds=state.cold_start_seconds,
            carried=state.capacity_carried,
            failed=state.capacity_failed,
            sizing=sizing_of(state.performance_model),
        ),
        idle=idle.IdleState(
            last_request=state.last_request_time,
            arrivals=state.router_arrivals,
            gaps=tuple(float(g) for g in state.idle_gaps or () if g > 0)[-idle.MAX_GAPS :],
        ),
    )


def _plan_status(plan: PlanState) -> dict[str, object]:
    """SLO mode's learned and smoothed figures, rounded (none before its first evaluation)."""
    if plan.updated is None:
        return {}
    return {
        "capacity_scale": None if plan.capacity_scale is None else round(plan.capacity_scale, 4),
        "demand_level": None if plan.level is None else round(plan.level, 4),
        "demand_trend": round(plan.trend, 6),
        "demand_updated": plan.updated,
        "demand_peaks": [api.DemandPeak(at=t, work=round(w, 4)) for t, w in plan.peaks],
        "cold_start_seconds": None if plan.cold_start_seconds is None else round(plan.cold_start_seconds, 1),
        "capacity_carried": None if plan.carried is None else round(plan.carried, 4),
        "capacity_failed": None if plan.failed is None else round(plan.failed, 4),
        "performance_model": None if plan.sizing is None else model_state(plan.sizing),
    }


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def model_state(sizing: Sizing) -> api.PerformanceModelState:
    """The performance model as the status keeps it (six significant digits)."""
    fit = sizing.fit
    return api.PerformanceModelState(
        step=[_sig(v) for v in fit.theta],
        covariance=[_sig(v) for v in fit.covariance],
        prior=[_sig(v) for v in fit.prior],
        windows=fit.windows,
        rejected=fit.rejected,
        likelihood=[round(v, 3) for v in sizing.likelihood],
        prompt_tokens=None if sizing.prompt is None else round(sizing.prompt, 1),
        output_tokens=None if sizing.output is None else round(sizing.output, 1),
    )


def sizing_of(state: api.PerformanceModelState | None) -> Sizing | None:
    """The performance model back from the status; None (start again from the GPU table) when absent,
    from another grid, or not a model (a hand-edited status: negative or non-finite figures)."""
    if state is None or (state.likelihood and len(state.likelihood) != len(GRID)):
        return None
    if len(state.prior) not in (0, 4) or not all(
        v > 0 and math.isfinite(v) for v in (*state.step, *state.prior)
    ):
        return None
    figures = (
        *state.covariance,
        *state.likelihood,
        state.prompt_tokens or 0,
        state.output_tokens or 0,
    )
    if not all(math.isfinite(v) for v in figures):
        return None
    fit = Fit(tuple(state.step), tuple(state.covariance), state.windows, state.rejected, tuple(state.prior))
    likelihood = tuple(state.likelihood) if state.likelihood else (0.0,) * len(GRID)
    return Sizing(fit, likelihood, state.prompt_tokens, state.output_tokens)
