"""The operator's own metrics (prometheus-client), served on ``QWEN_OPERATOR_METRICS_PORT``.

The per-service gauges carry ``namespace`` and ``name`` (the QwenService); the chart's alerts and
dashboard join them with the vLLM series on ``namespace`` and ``serving_qwenops_io_service``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from qwen_operator import api, scaling, startup

_SERVICE = ["namespace", "name"]
DESIRED_REPLICAS = Gauge("qwen_operator_desired_replicas", "Replicas the scaler asks for.", _SERVICE)
READY_REPLICAS = Gauge(
    "qwen_operator_ready_replicas", "Ready vLLM pods the scaler saw at its last evaluation.", _SERVICE
)
RECOMMENDED_REPLICAS = Gauge(
    "qwen_operator_recommended_replicas",
    "Replicas the load needs before step limits and bounds (absent while metrics are unavailable).",
    _SERVICE,
)
MIN_REPLICAS = Gauge("qwen_operator_min_replicas", "spec.autoscaling.minReplicas.", _SERVICE)
MAX_REPLICAS = Gauge("qwen_operator_max_replicas", "spec.autoscaling.maxReplicas.", _SERVICE)
METRICS_AVAILABLE = Gauge(
    "qwen_operator_metrics_available",
    "1 when the last evaluation had usable load metrics, 0 when it held replicas for lack of them.",
    _SERVICE,
)
SCALING_LIMITED = Gauge(
    "qwen_operator_scaling_limited",
    "1 when a step limit or a replica bound cut the last decision (the ScalingLimited condition).",
    _SERVICE,
)
DECISIONS = Counter(
    "qwen_operator_scaling_decisions_total",
    "Scaling decisions per QwenService by direction (up, down, none) and reason.",
    [*_SERVICE, "direction", "reason"],
)
# Every QwenService, autoscaled or not (the dashboard's variables and the on-call's first look).
SERVICE_PHASE = Gauge(
    "qwen_operator_service_phase",
    "1 for the QwenService's current status.phase, 0 for the others.",
    [*_SERVICE, "phase"],
)
SERVICE_REPLICAS = Gauge(
    "qwen_operator_service_replicas", "status.replicas: the Deployment's pods.", _SERVICE
)
SERVICE_READY = Gauge("qwen_operator_service_ready_replicas", "status.readyReplicas: pods serving.", _SERVICE)
SERVICE_DESIRED = Gauge(
    "qwen_operator_service_desired_replicas",
    "status.desiredReplicas: replicas the operator asks for.",
    _SERVICE,
)
_STATUS_FIELDS = (  # each gauge, and the status field it exports
    (SERVICE_REPLICAS, "replicas"),
    (SERVICE_READY, "readyReplicas"),
    (SERVICE_DESIRED, "desiredReplicas"),
)
QUERIES = Counter("qwen_operator_metric_queries_total", "Metric queries sent.", ["source"])
QUERY_ERRORS = Counter(
    "qwen_operator_metric_query_errors_total", "Metric queries or scrapes that failed.", ["source"]
)
QUERY_SECONDS = Histogram(
    "qwen_operator_metric_query_seconds",
    "Time to gather one evaluation's metrics from a source.",
    ["source"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POD_STARTUP = Histogram(
    "qwen_operator_pod_startup_seconds",
    "Where a vLLM pod's cold start went, once per pod as it becomes ready: node (created to scheduled),"
    " init (init containers, the model cache), image (to the container's start), engine (to Ready),"
    " total.",
    [*_SERVICE, "phase"],
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 3600),
)
EVALUATION_SECONDS = Histogram(
    "qwen_operator_evaluation_seconds",
    "Time of one scaler evaluation cycle (listing, metrics, decisions, writes).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_GAUGES = (
    DESIRED_REPLICAS,
    READY_REPLICAS,
    RECOMMENDED_REPLICAS,
    MIN_REPLICAS,
    MAX_REPLICAS,
    METRICS_AVAILABLE,
    SCALING_LIMITED,
)


# The moves each reason can come with. Their counters start at 0 with the service, so the first
# scale-up already shows in increase()/rate() (Prometheus cannot see a counter that appears at 1).
_R = scaling.Reason
MOVES = {
    "up": (_R.ABOVE_TARGET, _R.PANIC, _R.SCALE_UP_LIMITED, _R.TOO_FEW_REPLICAS, _R.TOO_MANY_REPLICAS),
    "down": (_R.BELOW_TARGET, _R.SCALE_DOWN_STABILIZED, _R.SCALE_DOWN_LIMITED, _R.TOO_MANY_REPLICAS),
}
_decision_labels: dict[tuple[str, str], set[tuple[str, str]]] = {}


def record(
    namespace: str, name: str, decision: scaling.Decision, before: int, min_replicas: int, max_replicas: int
) -> None:
    """Export one evaluation of one QwenService."""
    direction = "up" if decision.replicas > before else "down" if decision.replicas < before else "none"
    seen = _decision_labels.get((namespace, name))
    if seen is None:
        seen = _decision_labels[namespace, name] = set()
        for move, reasons in MOVES.items():
            for reason in reasons:
                DECISIONS.labels(namespace, name, move, reason.value)
                seen.add((move, reason.value))
    DECISIONS.labels(namespace, name, direction, decision.reason.value).inc()
    seen.add((direction, decision.reason.value))
    DESIRED_REPLICAS.labels(namespace, name).set(decision.replicas)
    READY_REPLICAS.labels(namespace, name).set(decision.ready_replicas)
    MIN_REPLICAS.labels(namespace, name).set(min_replicas)
    MAX_REPLICAS.labels(namespace, name).set(max_replicas)
    METRICS_AVAILABLE.labels(namespace, name).set(1 if decision.metrics_available else 0)
    SCALING_LIMITED.labels(namespace, name).set(1 if decision.limited else 0)
    if decision.recommendation is None:
        _remove(RECOMMENDED_REPLICAS, namespace, name)
    else:
        RECOMMENDED_REPLICAS.labels(namespace, name).set(decision.recommendation)


def record_service(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Export what a QwenService's status says, whether it autoscales or not."""
    phase = status.get("phase")
    for known in api.PHASES:
        SERVICE_PHASE.labels(namespace, name, known).set(1 if phase == known else 0)
    for gauge, field in _STATUS_FIELDS:
        value = status.get(field)
        if isinstance(value, int | float):
            gauge.labels(namespace, name).set(value)
        else:
            _remove(gauge, namespace, name)


def forget_service(namespace: str, name: str) -> None:
    """Drop a deleted QwenService's series."""
    for known in api.PHASES:
        _remove(SERVICE_PHASE, namespace, name, known)
    for gauge, _ in _STATUS_FIELDS:
        _remove(gauge, namespace, name)
    for phase in startup.PHASES:
        with contextlib.suppress(KeyError):
            POD_STARTUP.remove(namespace, name, phase)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted (or no longer autoscaled) service's gauges, so alerts do not fire on ghosts."""
    for gauge in _GAUGES:
        _remove(gauge, namespace, name)
    for labels in _decision_labels.pop((namespace, name), set()):
        _remove(DECISIONS, namespace, name, *labels)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
