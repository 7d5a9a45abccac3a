"""The operator's own per-service metrics: what the alerts and dashboard read."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from qwen_operator import api, scaling, telemetry

NOW = datetime(2026, 11, 21, tzinfo=UTC)
SPEC = api.AutoscalingSpec.model_validate({"enabled": True, "minReplicas": 1, "maxReplicas": 3})


def value(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def test_record_exports_the_decision_and_forget_removes_it() -> None:
    sample = scaling.PodSample(running=90, waiting=0, kv_cache_usage=0.2, age_seconds=1)
    obs = scaling.Observation(replicas=1, ready_pods=("p",), samples={"p": sample})
    decision = scaling.decide(obs, SPEC, scaling.State(), NOW)
    assert decision.replicas == 3
    assert decision.recommendation is not None
    assert decision.recommendation > 3
    telemetry.record("t", "svc", decision, before=1, min_replicas=1, max_replicas=3)
    assert value("qwen_operator_desired_replicas", namespace="t", name="svc") == 3
    assert value("qwen_operator_ready_replicas", namespace="t", name="svc") == 1
    assert value("qwen_operator_max_replicas", namespace="t", name="svc") == 3
    assert value("qwen_operator_recommended_replicas", namespace="t", name="svc") == decision.recommendation
    assert value("qwen_operator_metrics_available", namespace="t", name="svc") == 1
    assert value("qwen_operator_scaling_limited", namespace="t", name="svc") == 1
    up = {"namespace": "t", "name": "svc", "direction": "up"}
    assert value("qwen_operator_scaling_decisions_total", **up, reason=decision.reason.value) == 1
    # Counters of other moves exist from the start at 0, so the first of them shows in increase().
    assert value("qwen_operator_scaling_decisions_total", **up, reason="Panic") == 0
    assert (
        value("qwen_operator_scaling_decisions_total", **{**up, "direction": "down"}, reason="BelowTarget")
        == 0
    )

    blind = scaling.decide(scaling.Observation(replicas=3, ready_pods=("p",)), SPEC, decision.state, NOW)
    telemetry.record("t", "svc", blind, before=3, min_replicas=1, max_replicas=3)
    assert value("qwen_operator_metrics_available", namespace="t", name="svc") == 0
    assert value("qwen_operator_recommended_replicas", namespace="t", name="svc") is None

    telemetry.forget("t", "svc")
    assert value("qwen_operator_desired_replicas", namespace="t", name="svc") is None
    assert value("qwen_operator_scaling_decisions_total", **up, reason=decision.reason.value) is None
    telemetry.forget("t", "svc")  # twice is harmless
