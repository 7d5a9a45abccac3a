"""Bad input gets a clear message; status tells the story of the Deployment."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_operator import api, status
from qwen_operator.validation import InvalidSpec, parse

NOW = "2026-11-21T12:00:00Z"
LATER = "2026-11-21T12:05:00Z"


def body(minimal: dict[str, Any], **spec: Any) -> dict[str, Any]:
    b = copy.deepcopy(minimal)
    b["spec"].update(spec)
    return b


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"engine": {"gpuMemoryUtilization": 2}},
            "spec.engine.gpuMemoryUtilization: Input should be less than",
        ),
        ({"engine": {"extraArgs": ["--port=1"]}}, "'--port=1' sets --port, which the operator manages"),
        ({"engine": {"env": [{"name": "HF_TOKEN", "value": "x"}]}}, "HF_TOKEN is set by the operator"),
        (
            {"engine": {"loadFormat": "runai_streamer", "extraArgs": ["--load-f", "pt"]}},
            "'--load-f' sets --load-format, which spec.engine.loadFormat sets; keep one of them",
        ),
        ({"engine": {"enableAutoToolChoice": True}}, "needs spec.engine.toolCallParser"),
        ({"engine": {"tensorParallelSize": 2}, "resources": {"gpus": 3}}, "must be a multiple of"),
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "minReplicas (3) must be <= maxReplicas (2)"),
        ({"model": {"name": "../etc", "source": {"pvc": {"claimName": "w"}}}}, "must not contain '..'"),
        (
            {"engine": {"tensorParalelSize": 2}},
            "spec.engine.tensorParalelSize: no such field: did you mean tensorParallelSize?",
        ),
        ({"model": {}}, "spec.model.name: Field required"),
        (
            {"autoscaling": {"schedule": {"timeZone": "Europe/Berlinn", "windows": []}}},
            "unknown time zone 'Europe/Berlinn' (an IANA name, such as Europe/Berlin or UTC)",
        ),
        (
            {
                "autoscaling": {
                    "maxReplicas": 5,
                    "schedule": {"windows": [{"start": "08:00", "end": "18:00", "minReplicas": 8}]},
                }
            },
            "spec.autoscaling.schedule.windows[0]: minReplicas 8 > maxReplicas 5",
        ),
        (
            {"autoscaling": {"schedule": {"windows": [{"start": "8:00", "end": "18:00", "minReplicas": 2}]}}},
            "spec.autoscaling.schedule.windows[0].start: String should match pattern",
        ),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(minimal, spec, message):
    with pytest.raises(InvalidSpec) as caught:
        parse(body(minimal, **spec))
    assert any(message in m for m in caught.value.messages), caught.value.messages


def test_missing_spec_is_reported(minimal):
    del minimal["spec"]
    with pytest.raises(InvalidSpec, match="spec: Field required"):
        parse(minimal)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
spec_keys = st.sampled_from(
    ["model", "engine", "resources", "scheduling", "autoscaling", "replicas", "service"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(spec_keys, json_values, max_size=4))
def test_no_object_crashes_the_parser(spec):
    """Whatever is stored in the cluster, parsing yields a QwenService or an InvalidSpec, never a crash."""
    obj = {"metadata": {"name": "q", "namespace": "n"}, "spec": spec}
    messages: list[str] = []
    try:
        parse(obj)
    except InvalidSpec as exc:
        messages = exc.messages or [""]
    assert all(isinstance(m, str) and m for m in messages)


def deployment(
    desired: int, ready: int, generation: int = 1, observed: int = 1, **conditions: str
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed, "replicas": desired, "updatedReplicas": desired,
            "readyReplicas": ready,
            "conditions": [{"type": t, "status": s, "reason": "R", "message": f"{t} is {s}"}
                           for t, s in conditions.items()],
        },
    }  # fmt: skip


def cond(st_: api.QwenServiceStatus, type_: str) -> api.Condition:
    return next(c for c in st_.conditions if c.type == type_)


@pytest.mark.parametrize(
    ("dep", "phase", "ready"),
    [
        (None, "Pending", "False"),
        (deployment(2, 0), "Progressing", "False"),
        (deployment(2, 1), "Progressing", "False"),
        (deployment(2, 2), "Ready", "True"),
        (deployment(2, 2, generation=2, observed=1), "Progressing", "True"),
        (deployment(2, 0, Progressing="False"), "Degraded", "False"),
        (deployment(2, 1, ReplicaFailure="True"), "Degraded", "False"),
        (deployment(0, 0), "Ready", "True"),
    ],
)
def test_phase_and_ready_follow_the_deployment(minimal, dep, phase, ready):
    got = status.compute_status(parse(minimal), dep, NOW)
    assert got.phase == phase
    assert cond(got, "Ready").status == ready
    assert cond(got, "InvalidSpec").status == "False"
    assert got.endpoint == "http://qwen.ml.svc:8000/v1"


def test_conflicts_are_degraded_with_their_message(minimal):
    problem = status.Problem("ResourceConflict", "Deployment ml/qwen exists and is not owned")
    got = status.compute_status(parse(minimal), deployment(1, 1), NOW, [problem])
    assert got.phase == "Degraded"
    assert cond(got, "Degraded").reason == "ResourceConflict"
    assert "not owned" in cond(got, "Degraded").message


def test_transition_time_changes_only_when_a_condition_flips(minimal):
    svc = parse(minimal)
    first = status.compute_status(svc, deployment(1, 0), NOW)
    svc2 = svc.model_copy(update={"status": first})
    same = status.compute_status(svc2, deployment(1, 0), LATER)
    assert cond(same, "Ready").last_transition_time == NOW
    flipped = status.compute_status(svc2, deployment(1, 1), LATER)
    assert cond(flipped, "Ready").last_transition_time == LATER


def test_invalid_status_keeps_what_runs(minimal):
    old = status.compute_status(parse(minimal), deployment(2, 2), NOW)
    got = status.invalid_status(old, 3, ["spec.engine.extraArgs: bad"], LATER)
    assert got.phase == "Invalid"
    assert cond(got, "InvalidSpec").status == "True"
    assert cond(got, "InvalidSpec").message == "spec.engine.extraArgs: bad"
    assert got.ready_replicas == 2
    assert got.observed_generation == 3


def test_conditions_keep_their_order_so_an_unchanged_status_is_not_rewritten(minimal):
    """The reconcile sets its conditions, the scaler its own after them; neither may reorder the other's
    (each would then write the status on every pass with nothing changed)."""
    svc = parse({**minimal, "spec": {**minimal["spec"], "autoscaling": {"enabled": True}}})
    first = status.compute_status(svc, deployment(2, 2), NOW)
    scaler = [
        *first.conditions,
        *(api.Condition(type=t, status="True", reason="Ok") for t in status.SCALING_CONDITIONS),
    ]
    current = first.model_copy(update={"conditions": scaler})
    again = status.compute_status(svc.model_copy(update={"status": current}), deployment(2, 2), LATER)
    assert [c.type for c in again.conditions] == [c.type for c in scaler]
    assert status.status_patch(again) == status.status_patch(current)


def test_pods_awaiting_their_first_scrape_are_unknown_for_the_grace_then_unavailable() -> None:
    """MetricsAvailable: Unknown (AwaitingFirstScrape) while new ready pods have not been scraped yet,
    for staleAfterSeconds from when they were seen; then False (MetricsUnavailable). A transition time
    someone garbled ends the grace instead of failing the evaluation."""
    from qwen_operator import scaling

    def decision(ready: int, available: bool) -> scaling.Decision:
        if not available:
            return scaling.Decision(
                1, scaling.Reason.METRICS_UNAVAILABLE, "m", scaling.State(), ready_replicas=ready
            )
        seen = api.ScalingObservation(ready_replicas=ready, pods_with_data=ready, concurrency=1, waiting=0)
        return scaling.Decision(1, scaling.Reason.AT_TARGET, "m", scaling.State(), 1, seen, ready)

    def metrics(st: api.QwenServiceStatus) -> tuple[str, str, str | None]:
        (c,) = [c for c in st.conditions if c.type == status.METRICS_AVAILABLE]
        return c.status, c.reason, c.last_transition_time

    start = "2026-11-30T12:00:00Z"
    none = status.scaling_status(api.QwenServiceStatus(), decision(0, False), start, 1)
    assert metrics(none)[:2] == ("False", "NoReadyPods")
    waiting = status.scaling_status(none, decision(1, False), "2026-11-30T12:00:10Z", 1, grace_seconds=60)
    assert metrics(waiting) == ("Unknown", "AwaitingFirstScrape", "2026-11-30T12:00:10Z")
    still = status.scaling_status(waiting, decision(1, False), "2026-11-30T12:01:05Z", 1, grace_seconds=60)
    assert metrics(still)[:2] == ("Unknown", "AwaitingFirstScrape")
    late = status.scaling_status(still, decision(1, False), "2026-11-30T12:01:11Z", 1, grace_seconds=60)
    assert metrics(late)[:2] == ("False", "MetricsUnavailable")
    garbled = waiting.model_copy(
        update={
            "conditions": [
                c.model_copy(update={"last_transition_time": "yesterday"}) for c in waiting.conditions
            ]
        }
    )
    assert metrics(status.scaling_status(garbled, decision(1, False), start, 1))[:2] == (
        "False",
        "MetricsUnavailable",
    )
    seen = status.scaling_status(waiting, decision(1, True), start, 1)
    lost = status.scaling_status(seen, decision(1, False), start, 1)
    assert metrics(lost)[:2] == ("False", "MetricsUnavailable"), "lost after being seen: at once"


def test_learned_figures_wait_for_the_next_refresh_but_a_scale_up_time_and_idle_gaps_do_not() -> None:
    """A status that differs only in what the scaler learns every sample describes the same decision
    (written at most once a minute); the cooldown's start and the idle gaps are written at once."""
    base = {
        "desiredReplicas": 3,
        "autoscaling": {
            "reason": "AtTarget",
            "state": {
                "lastScaleUpTime": NOW,
                "idleGaps": [600],
                "demandLevel": 1.5,
                "performanceModel": {"windows": 3},
                "recommendations": [{"since": NOW, "replicas": 3}],
            },
        },
    }

    def changed(**state: Any) -> dict[str, Any]:
        out = copy.deepcopy(base)
        out["autoscaling"]["state"].update(state)
        return out

    same = status.material(base)
    assert status.material(changed(demandLevel=2.5, performanceModel={"windows": 4})) == same
    assert status.material(changed(recommendations=[{"since": LATER, "replicas": 2}])) == same
    assert status.material(changed(lastScaleUpTime=LATER)) != same
    assert status.material(changed(idleGaps=[600, 900])) != same
    # Every persisted field is one or the other, named as the API server stores it.
    fields = {info.alias for info in api.ScalerState.model_fields.values()}
    assert set(status.LAG_TOLERANT_STATE) == fields - {"lastScaleUpTime", "idleGaps"}
