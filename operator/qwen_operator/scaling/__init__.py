"""The scaling core: ``decide(observation, spec, state, now, seed) -> Decision``, pure (no I/O, no clock).

- :mod:`.stages`: the decision's named stages (recommend, cold start, scale up, scale down, bounds,
  scale to zero).
- :mod:`.slo`: SLO mode's plan, one of the signals recommend weighs (the load, the window's verdict,
  the capacity learned, the forecast, the size the performance model of :mod:`qwen_operator.perf`
  predicts).
- :mod:`.explain`: the SLO plan's message.
- :mod:`.state`: the scaler's memory for one service, and its one conversion to and from the status.

See docs/autoscaling.md.
"""

from qwen_operator.scaling.slo import Capacity, Plan, PlanState, Seen, plan
from qwen_operator.scaling.stages import (
    DEFAULT_SEED,
    LIMITED,
    Decision,
    Limits,
    LoadRecommendation,
    Observation,
    PodSample,
    Reason,
    Signal,
    bound,
    concurrency,
    decide,
    deletion_costs,
    kv_usages,
    kv_waiting,
    limits,
    recommend,
    record,
    scale_down,
    scale_up,
    signals,
    usable_samples,
    window_max,
)
from qwen_operator.scaling.state import State, model_state, sizing_of
from qwen_operator.scaling.state import from_status as state_from_status
from qwen_operator.scaling.state import to_status as state_to_status

__all__ = [
    "DEFAULT_SEED",
    "LIMITED",
    "Capacity",
    "Decision",
    "Limits",
    "LoadRecommendation",
    "Observation",
    "Plan",
    "PlanState",
    "PodSample",
    "Reason",
    "Seen",
    "Signal",
    "State",
    "bound",
    "concurrency",
    "decide",
    "deletion_costs",
    "kv_usages",
    "kv_waiting",
    "limits",
    "model_state",
    "plan",
    "recommend",
    "record",
    "scale_down",
    "scale_up",
    "signals",
    "sizing_of",
    "state_from_status",
    "state_to_status",
    "usable_samples",
    "window_max",
]
