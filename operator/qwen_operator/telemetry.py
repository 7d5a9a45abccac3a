"""The operator's own metrics (prometheus-client), served on ``QWEN_OPERATOR_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DESIRED_REPLICAS = Gauge(
    "qwen_operator_desired_replicas", "Replicas the scaler asks for.", ["namespace", "name"]
)
DECISIONS = Counter(
    "qwen_operator_scaling_decisions_total",
    "Scaling decisions by direction (up, down, none) and reason.",
    ["direction", "reason"],
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
EVALUATION_SECONDS = Histogram(
    "qwen_operator_evaluation_seconds",
    "Time of one scaler evaluation cycle (listing, metrics, decisions, writes).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
