"""Compute a QwenService's status from what exists (pure; the time is passed in)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qwen_operator import api, labels, render, scaling

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
INVALID_SPEC = "InvalidSpec"
SCALING_ACTIVE = "ScalingActive"
SCALING_LIMITED = "ScalingLimited"
METRICS_AVAILABLE = "MetricsAvailable"
MODEL_CACHED = "ModelCached"
IMAGE_PREPULLED = "ImagePrePulled"
SCALED_TO_ZERO = "ScaledToZero"
SCALING_CONDITIONS = (SCALING_ACTIVE, SCALING_LIMITED, METRICS_AVAILABLE, SCALED_TO_ZERO)


@dataclass(frozen=True)
class Problem:
    """Something that keeps the workload from matching the spec, with a reason and an actionable message."""

    reason: str
    message: str


MESSAGE_MAX = 2048  # characters of a condition's or the scaler's message (what a spec puts in it, too)


def brief(message: str, limit: int = MESSAGE_MAX) -> str:
    """``message``, cut to ``limit`` characters with a note of how much was left out."""
    if len(message) <= limit:
        return message
    kept = limit - 40  # room for the note
    return message[:kept] + f"... ({len(message) - kept} more characters)"


def set_condition(
    conditions: Sequence[api.Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[api.Condition]:
    """Replace one condition in place (a new one goes last), keeping its lastTransitionTime unless its
    status flips, as apimachinery's SetStatusCondition does: the reconcile and the scaler each set their
    own conditions, and a reordered list would make each rewrite the status when nothing changed.
    ``status`` None is "Unknown"."""
    value: Any = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = api.Condition(
        type=type_,
        status=value,
        reason=reason,
        message=brief(message),
        last_transition_time=since,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def _deployment_condition(deployment: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in deployment.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def compute_status(
    svc: api.QwenService,
    deployment: Mapping[str, Any] | None,
    now: str,
    problems: Sequence[Problem] = (),
    cached: tuple[bool, str, str] | None = None,
    prepulled: tuple[bool, str, str] | None = None,
) -> api.QwenServiceStatus:
    """The status a QwenService should show, given its Deployment (or None), any problems, where its
    model cache stands (``cached``: the ModelCached condition while the spec prefills one) and its image
    pre-pull (``prepulled``: the ImagePrePulled condition while the spec asks for it; never a problem)."""
    old = svc.status
    gen = svc.metadata.generation
    conds: list[api.Condition] = list(old.conditions)
    conds = set_condition(conds, INVALID_SPEC, False, "Valid", "spec is valid", now, gen)

    dep_status: Mapping[str, Any] = (deployment or {}).get("status", {}) or {}
    desired = int((deployment or {}).get("spec", {}).get("replicas", render.initial_replicas(svc)))
    replicas = int(dep_status.get("replicas", 0) or 0)
    ready = int(dep_status.get("readyReplicas", 0) or 0)
    updated = int(dep_status.get("updatedReplicas", 0) or 0)
    rolled = deployment is not None and int(dep_status.get("observedGeneration", 0) or 0) >= int(
        deployment.get("metadata", {}).get("generation", 0) or 0
    )

    failing = list(problems)
    if deployment is not None:
        progressing = _deployment_condition(deployment, "Progressing")
        if progressing and progressing.get("status") == "False":
            failing.append(
                Problem(
                    progressing.get("reason", "ProgressDeadlineExceeded"),
                    progressing.get("message", "the Deployment stopped progressing"),
                )
            )
        replica_failure = _deployment_condition(deployment, "ReplicaFailure")
        if replica_failure and replica_failure.get("status") == "True":
            failing.append(
                Problem("ReplicaFailure", replica_failure.get("message", "pods cannot be created"))
            )

    in_progress = (
        deployment is None or not rolled or updated < desired or ready < desired or replicas > desired
    )
    if failing:
        phase = "Degraded"
    elif deployment is None:
        phase = "Pending"
    elif in_progress:
        phase = "Progressing"
    else:
        phase = "Ready"

    serving = ready > 0 and ready >= desired
    ready_msg = f"{ready}/{desired} replicas ready"
    conds = set_condition(
        conds,
        READY,
        serving or (desired == 0 and deployment is not None),
        "ScaledToZero" if desired == 0 else ("ReplicasReady" if serving else "ReplicasNotReady"),
        ready_msg,
        now,
        gen,
    )
    conds = set_condition(
        conds,
        PROGRESSING,
        in_progress and not failing,
        "RolloutInProgress" if in_progress else "RolloutComplete",
        ready_msg,
        now,
        gen,
    )
    conds = set_condition(
        conds,
        DEGRADED,
        bool(failing),
        failing[0].reason if failing else "AsExpected",
        "; ".join(p.message for p in failing) if failing else "no problems",
        now,
        gen,
    )

    if cached is not None:
        conds = set_condition(conds, MODEL_CACHED, cached[0], cached[1], cached[2], now, gen)
    elif not render.prefilled(svc.spec):  # (prefilled, but not looked at this time: kept as it was)
        conds = [c for c in conds if c.type != MODEL_CACHED]

    if prepulled is not None:
        conds = set_condition(conds, IMAGE_PREPULLED, *prepulled, now, gen)
    else:
        conds = [c for c in conds if c.type != IMAGE_PREPULLED]

    if not svc.spec.autoscaling.enabled:
        conds = set_condition(
            conds, SCALING_ACTIVE, False, "AutoscalingDisabled", "spec.replicas rules", now, gen
        )
        conds = [c for c in conds if c.type == SCALING_ACTIVE or c.type not in SCALING_CONDITIONS]

    return old.model_copy(
        update={
            "autoscaling": old.autoscaling if svc.spec.autoscaling.enabled else None,
            "phase": phase,
            "conditions": conds,
            "replicas": replicas,
            "ready_replicas": ready,
            "desired_replicas": desired,
            "observed_generation": gen,
            "endpoint": render.endpoint(svc),
            "chat_ui": render.chat_ui_url(svc),
            "selector": labels.selector_string(svc.name),
        }
    )


ADVISORY = "Advisory"  # ScalingActive's reason in mode Advisory
AWAITING_FIRST_SCRAPE = "AwaitingFirstScrape"


def _metrics_condition(
    old: api.QwenServiceStatus, decision: scaling.Decision, now: str, grace_seconds: float
) -> tuple[bool | None, str]:
    """MetricsAvailable's status and reason. Ready pods that have not reported since the service had
    none are awaited (Unknown, AwaitingFirstScrape) for ``grace_seconds`` (staleAfterSeconds) from the
    moment they were seen: Prometheus scrapes a pod some seconds after it turns Ready, and that is no
    reason for a Warning. After the grace, or once metrics were seen and then lost, it is
    MetricsUnavailable."""
    if decision.metrics_available:
        return True, "MetricsAvailable"
    if not decision.ready_replicas:
        return False, "NoReadyPods"
    prev = next((c for c in old.conditions if c.type == METRICS_AVAILABLE), None)
    if prev is None or prev.reason == "NoReadyPods":
        return None, AWAITING_FIRST_SCRAPE
    if prev.reason == AWAITING_FIRST_SCRAPE:
        try:  # a status someone edited by hand may hold anything: then the grace is over
            waited = (
                datetime.fromisoformat(now) - datetime.fromisoformat(prev.last_transition_time or "")
            ).total_seconds()
        except (TypeError, ValueError):
            waited = math.inf
        if waited < grace_seconds:
            return None, AWAITING_FIRST_SCRAPE
    return False, "MetricsUnavailable"


def scaling_status(
    old: api.QwenServiceStatus,
    decision: scaling.Decision,
    now: str,
    generation: int | None,
    grace_seconds: float = 60.0,
    advisory: bool = False,
    can_sleep: bool = False,
) -> api.QwenServiceStatus:
    """The status carrying a scaling decision: desired replicas, observation, reason, state, conditions.
    ``advisory``: the decision is advice (``advisedReplicas``); the Deployment, its desired replicas
    and the last scale time are left as they are. ``can_sleep``: the service may scale to zero, and
    the ScaledToZero condition says whether it is there and why (without it, there is none)."""
    state = decision.state
    available = decision.metrics_available
    obs = decision.observation
    active_reason = "ValidMetricFound" if available else scaling.Reason.METRICS_UNAVAILABLE.value
    # At zero no pod reports, and that is the point: the router's queue decides (asleep or waking).
    asleep = decision.reason in (scaling.Reason.SCALED_TO_ZERO, scaling.Reason.WAKE) and not available
    if asleep:
        active_reason = decision.reason.value
    conds = set_condition(
        old.conditions,
        SCALING_ACTIVE,
        available or asleep,
        ADVISORY if advisory and available else active_reason,
        f"advisory, spec.replicas rules: {decision.message}" if advisory else decision.message,
        now,
        generation,
    )
    conds = set_condition(
        conds,
        SCALING_LIMITED,
        decision.limited,
        decision.reason.value if decision.limited else "DesiredWithinRange",
        decision.message,
        now,
        generation,
    )
    metrics_status, metrics_reason = _metrics_condition(old, decision, now, grace_seconds)
    conds = set_condition(
        conds,
        METRICS_AVAILABLE,
        metrics_status,
        metrics_reason,
        f"{obs.pods_with_data} of {obs.ready_replicas} ready pods report metrics"
        if obs is not None
        else decision.message,
        now,
        generation,
    )
    if can_sleep:
        asleep = decision.replicas == 0
        conds = set_condition(
            conds,
            SCALED_TO_ZERO,
            asleep,
            "Idle"
            if asleep
            else ("AwaitingIdle" if decision.reason is scaling.Reason.AWAITING_IDLE else "Serving"),
            decision.message,
            now,
            generation,
        )
    else:
        conds = [c for c in conds if c.type != SCALED_TO_ZERO]
    auto = api.AutoscalingStatus(
        reason=decision.reason.value,
        message=brief(decision.message),
        recommendation=decision.recommendation,
        advised_replicas=decision.replicas if advisory else None,
        observation=obs,
        state=scaling.state_to_status(state),
    )
    if advisory:
        return old.model_copy(update={"conditions": conds, "autoscaling": auto})
    return old.model_copy(
        update={
            "conditions": conds,
            "desired_replicas": decision.replicas,
            "last_scale_time": state.last_scale_time,
            "autoscaling": auto,
        }
    )


def invalid_status(
    old: api.QwenServiceStatus, generation: int | None, messages: Sequence[str], now: str
) -> api.QwenServiceStatus:
    """Status for a spec that cannot work: say why; keep the replica figures of what is running."""
    message = "; ".join(messages)
    conds = set_condition(old.conditions, INVALID_SPEC, True, "InvalidSpec", message, now, generation)
    conds = set_condition(conds, READY, False, "InvalidSpec", "fix the spec: " + message, now, generation)
    return old.model_copy(update={"phase": "Invalid", "conditions": conds, "observed_generation": generation})


# What changes with every load sample: for people, the message, the observed load and the unlimited
# recommendation (and the conditions' messages); for the scaler itself, its window and dataSince.
# Everything else (replicas, reasons, condition states, scale times, how many pods are ready and report)
# is material.
DISPLAY_ONLY = ("message", "observation", "recommendation")
LAG_TOLERANT_STATE = tuple(
    info.alias or name
    for name, info in api.ScalerState.model_fields.items()
    if name not in api.ScalerState.WRITTEN_AT_ONCE
)
OBSERVED_COUNTS = ("readyReplicas", "podsWithData")


def material(st: Mapping[str, Any]) -> dict[str, Any]:
    """``st`` (as the API stores it) without what changes with every load sample: two statuses that
    differ only there describe the same decision."""
    out = {k: v for k, v in st.items() if k not in ("autoscaling", "conditions")}
    auto = st.get("autoscaling") or {}
    out["autoscaling"] = {k: v for k, v in auto.items() if k not in (*DISPLAY_ONLY, "state")}
    out["autoscaling"]["state"] = {
        k: v for k, v in (auto.get("state") or {}).items() if k not in LAG_TOLERANT_STATE
    }
    out["autoscaling"]["counts"] = {k: (auto.get("observation") or {}).get(k) for k in OBSERVED_COUNTS}
    out["conditions"] = [
        {k: c.get(k) for k in ("type", "status", "reason", "observedGeneration")}
        for c in st.get("conditions") or []
    ]
    return out


def status_patch(status: api.QwenServiceStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase, no unset fields)."""
    dumped: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped
