"""The chart's alerts and dashboard against real Prometheus tools.

promtool (Debian's prometheus package) checks and unit-tests the PrometheusRule; a real Prometheus
scrapes vLLM-format /metrics endpoints and the operator's own metrics endpoint, and evaluates every
PromQL expression of the rules and the dashboard.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from qwen_operator import api, scaling, telemetry
from qwen_tools import install
from tests.conftest import ROOT
from tests.fakevllm import FakeVLLM, free_port
from tests.prom import Prometheus

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CHART = ROOT / "charts" / "qwen-operator"
RELEASE_NS = "qwen-operator"
OPERATOR_JOB = "qwen-operator-metrics"  # the Service name: the job label a ServiceMonitor gives


def rules(values: dict[str, Any] | None = None) -> dict[str, Any]:
    objects = install.render(
        {"monitoring": {"prometheusRule": {"enabled": True}}, **(values or {})}, chart=CHART
    )
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def annotations(alert: str, labels: dict[str, str], value: str = "") -> dict[str, str]:
    """The alert's annotations as Prometheus would fill them in for ``labels`` (and ``value``)."""
    (rule,) = [r for g in rules()["groups"] for r in g["rules"] if r.get("alert") == alert]
    out = {}
    for key, text in rule["annotations"].items():
        for name, label in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", label)
        out[key] = text.replace("{{ $value | humanize }}", value).replace(
            "{{ $value | humanizePercentage }}", value
        )
    return out


def expect(alert: str, labels: dict[str, str], value: str = "") -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": annotations(alert, labels, value)}


def alert_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rules()["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "dashboards" / "qwen-operator.json").read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it with "All" selected."""
    return expr.replace("$namespace", ".*").replace("$service", ".*").replace("$__rate_interval", "30s")


# ------------------------------------------------------------------------------ promtool


def test_prometheus_rule_passes_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules()))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    broken = rules()
    broken["groups"][0]["rules"][0]["expr"] = "max by (namespace (qwen_operator_max_replicas)"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests: series over time in, alerts out."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules()))
    svc = 'namespace="ml", serving_qwenops_io_service="chat"'
    op = 'namespace="ml", name="chat"'
    warn = {"severity": "warning"}
    chat = {"namespace": "ml", "serving_qwenops_io_service": "chat"}
    named = {"namespace": "ml", "name": "chat"}
    static = 'namespace="ml", name="static"'
    chat_api = 'pod="a", handler="/v1/chat/completions"'
    statics = {"namespace": "ml", "name": "static"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # KV cache full on both pods for 20 minutes; 30 waiting over 2 pods.
                    {
                        "series": f'vllm:kv_cache_usage_perc{{{svc}, pod="a", engine="0"}}',
                        "values": "0.95x20",
                    },
                    {
                        "series": f'vllm:kv_cache_usage_perc{{{svc}, pod="b", engine="0"}}',
                        "values": "0.93x20",
                    },
                    {"series": f'vllm:num_requests_waiting{{{svc}, pod="a", engine="0"}}', "values": "20x20"},
                    {"series": f'vllm:num_requests_waiting{{{svc}, pod="b", engine="0"}}', "values": "10x20"},
                    {"series": f'vllm:num_requests_running{{{svc}, pod="a", engine="0"}}', "values": "64x20"},
                    {"series": f'vllm:num_requests_running{{{svc}, pod="b", engine="0"}}', "values": "64x20"},
                    # Pinned at max 2 while the load needs 5; metrics were lost after 5 minutes.
                    {"series": f"qwen_operator_desired_replicas{{{op}}}", "values": "2x20"},
                    {"series": f"qwen_operator_ready_replicas{{{op}}}", "values": "2x20"},
                    {"series": f"qwen_operator_max_replicas{{{op}}}", "values": "2x20"},
                    {"series": f"qwen_operator_recommended_replicas{{{op}}}", "values": "5x20"},
                    {"series": f"qwen_operator_metrics_available{{{op}}}", "values": "1x4 0x16"},
                    # Every service (autoscaled or not) has its status as gauges: "static" lacks 2 pods
                    # and has been Degraded for 20 minutes; chat is Ready with all it asked for.
                    {"series": f"qwen_operator_service_desired_replicas{{{op}}}", "values": "2x20"},
                    {"series": f"qwen_operator_service_ready_replicas{{{op}}}", "values": "2x20"},
                    {"series": f'qwen_operator_service_phase{{{op}, phase="Ready"}}', "values": "1x20"},
                    {"series": f"qwen_operator_service_desired_replicas{{{static}}}", "values": "3x20"},
                    {"series": f"qwen_operator_service_ready_replicas{{{static}}}", "values": "1x20"},
                    {
                        "series": f'qwen_operator_service_phase{{{static}, phase="Degraded"}}',
                        "values": "1x20",
                    },
                    {"series": f'qwen_operator_service_phase{{{static}, phase="Ready"}}', "values": "0x20"},
                    # chat's API: 100 good and 10 failed requests a minute (9.1%); the engine's own
                    # finished requests, none with an error.
                    {
                        "series": f'http_requests_total{{{svc}, {chat_api}, status="2xx"}}',
                        "values": "0+100x20",
                    },
                    {
                        "series": f'http_requests_total{{{svc}, {chat_api}, status="5xx"}}',
                        "values": "0+10x20",
                    },
                    {
                        "series": f'vllm:request_success_total{{{svc}, pod="a", finished_reason="stop"}}',
                        "values": "0+100x20",
                    },
                    # 60 first tokens a minute, all between 2.5 and 5 s (p99 4.975 s); a steady
                    # stream of output tokens between 0.2 and 0.5 s apart (p99 0.497 s).
                    *[
                        {
                            "series": f'vllm:time_to_first_token_seconds_bucket{{{svc}, pod="a", le="{le}"}}',
                            "values": f"0+{n}x20",
                        }
                        for le, n in (("1.0", 0), ("2.5", 0), ("5.0", 60), ("+Inf", 60))
                    ],
                    {
                        "series": f'vllm:time_to_first_token_seconds_count{{{svc}, pod="a"}}',
                        "values": "0+60x20",
                    },
                    *[
                        {
                            "series": f'vllm:inter_token_latency_seconds_bucket{{{svc}, pod="a", le="{le}"}}',
                            "values": f"0+{n}x20",
                        }
                        for le, n in (("0.1", 0), ("0.2", 0), ("0.5", 600), ("+Inf", 600))
                    ],
                    {
                        "series": f'vllm:inter_token_latency_seconds_count{{{svc}, pod="a"}}',
                        "values": "0+600x20",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "12m",
                        "alertname": "QwenServiceKVCacheNearFull",
                        "exp_alerts": [expect("QwenServiceKVCacheNearFull", {**warn, **chat}, "94%")],
                    },
                    {
                        "eval_time": "8m",
                        "alertname": "QwenServiceRequestsQueueing",
                        "exp_alerts": [expect("QwenServiceRequestsQueueing", {**warn, **chat}, "15")],
                    },
                    {"eval_time": "5m", "alertname": "QwenServiceKVCacheNearFull", "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": "QwenServiceAtMaxReplicas",
                        "exp_alerts": [expect("QwenServiceAtMaxReplicas", {**warn, **named})],
                    },
                    {
                        "eval_time": "11m",
                        "alertname": "QwenServiceMetricsUnavailable",
                        "exp_alerts": [expect("QwenServiceMetricsUnavailable", {**warn, **named})],
                    },
                    {"eval_time": "7m", "alertname": "QwenServiceMetricsUnavailable", "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": "QwenServiceReplicasNotReady",
                        "exp_alerts": [expect("QwenServiceReplicasNotReady", {**warn, **statics})],
                    },
                    {"eval_time": "14m", "alertname": "QwenServiceReplicasNotReady", "exp_alerts": []},
                    {
                        "eval_time": "11m",
                        "alertname": "QwenServiceDegraded",
                        "exp_alerts": [
                            expect("QwenServiceDegraded", {**warn, **statics, "phase": "Degraded"})
                        ],
                    },
                    {
                        "eval_time": "16m",
                        "alertname": "QwenServiceErrors",
                        "exp_alerts": [
                            expect("QwenServiceErrors", {"severity": "critical", **chat}, "9.091%")
                        ],
                    },
                    {"eval_time": "9m", "alertname": "QwenServiceErrors", "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": "QwenServiceSlowFirstToken",
                        "exp_alerts": [expect("QwenServiceSlowFirstToken", {**warn, **chat}, "4.975")],
                    },
                    {
                        "eval_time": "16m",
                        "alertname": "QwenServiceSlowTokens",
                        "exp_alerts": [expect("QwenServiceSlowTokens", {**warn, **chat}, "497m")],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "QwenOperatorDown",
                        "exp_alerts": [
                            expect(
                                "QwenOperatorDown",
                                {"severity": "critical", "namespace": RELEASE_NS},
                            )
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ a live Prometheus


def busy_decision() -> scaling.Decision:
    """A real decision: two busy pods at maxReplicas 2 while the load needs more."""
    spec = api.AutoscalingSpec.model_validate({"enabled": True, "minReplicas": 1, "maxReplicas": 2})
    sample = scaling.PodSample(running=40, waiting=20, kv_cache_usage=0.95, age_seconds=1)
    obs = scaling.Observation(
        replicas=2, ready_pods=("chat-0", "chat-1"), samples=dict.fromkeys(("chat-0", "chat-1"), sample)
    )
    decision = scaling.decide(obs, spec, scaling.State(), datetime(2026, 11, 21, tzinfo=UTC))
    assert decision.reason is scaling.Reason.TOO_MANY_REPLICAS
    return decision


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping two busy vLLM pods and the operator's own /metrics (as the chart wires it)."""
    telemetry.record("ml", "chat", busy_decision(), before=2, min_replicas=1, max_replicas=2)
    telemetry.record_service(
        "ml", "chat", {"phase": "Ready", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2}
    )
    telemetry.QUERIES.labels("prometheus").inc()
    telemetry.QUERY_ERRORS.labels("prometheus").inc(0)
    stop = threading.Event()

    def evaluate() -> None:  # the scaler's loop: a cycle every half second, each with one query
        while not stop.wait(0.5):
            telemetry.EVALUATION_SECONDS.observe(0.05)
            telemetry.QUERIES.labels("prometheus").inc()

    ticker = threading.Thread(target=evaluate, daemon=True)
    ticker.start()
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1")
    operator_job = {
        "job_name": OPERATOR_JOB,
        "honor_labels": True,  # as the chart's ServiceMonitor: keep each series' QwenService namespace
        "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": RELEASE_NS}}],
    }
    pods = [FakeVLLM(host=f"127.0.0.{i + 2}") for i in range(2)]
    for pod in pods:
        pod.set(running=40, waiting=20, kv=0.95, busy=True)
    prom = Prometheus(tmp_path, extra_jobs=[operator_job])
    prom.start()
    prom.set_targets([(p.address, "ml", f"chat-{i}", "chat") for i, p in enumerate(pods)])
    try:
        prom.wait_for_series(2)
        deadline = time.monotonic() + 20  # and the operator's endpoint, before a test changes a counter
        while not prom.query('qwen_operator_desired_replicas{namespace="ml"}'):
            assert time.monotonic() < deadline, "Prometheus did not scrape the operator's /metrics"
            time.sleep(0.2)
        yield prom
    finally:
        stop.set()
        ticker.join(5)
        prom.stop()
        for pod in pods:
            pod.close()
        server.shutdown()
        thread.join(5)
        telemetry.forget("ml", "chat")
        telemetry.forget_service("ml", "chat")


def mine(labels: dict[str, str]) -> bool:
    """A series of this module's service ml/chat, or of no service (the operator's own)."""
    service = labels.get("name", labels.get("serving_qwenops_io_service"))
    return service is None or (labels.get("namespace"), service) == ("ml", "chat")


def _query(prom: Prometheus, expr: str) -> list[dict[str, Any]]:
    """Instant query; raises on a PromQL error (HTTP 400 with Prometheus' message)."""
    return prom.query(expr)


def _eventually_series(prom: Prometheus, expr: str, within: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        result = _query(prom, expr)
        if result and all(math.isfinite(float(s["value"][1])) for s in result):
            return result
        if time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_every_dashboard_query_returns_series(scraped: Prometheus) -> None:
    empty = []
    for title, expr in dashboard_exprs():
        if 'direction!="none"' in expr:
            continue  # scaling actions: checked below, they need a change within the window
        result = _eventually_series(scraped, concrete(expr))
        if not result or not all(math.isfinite(float(s["value"][1])) for s in result):
            empty.append((title, expr, result))
    assert not empty, f"queries with no (finite) series: {empty}"
    ttft = _query(scraped, concrete(dict(dashboard_exprs())["Time to first token"]))
    assert {s["metric"]["serving_qwenops_io_service"] for s in ttft} == {"chat"}


def test_scaling_actions_panel_counts_a_scale_up(scraped: Prometheus) -> None:
    (expr,) = [e for _, e in dashboard_exprs() if 'direction!="none"' in e]
    up = scaling.Decision(3, scaling.Reason.ABOVE_TARGET, "", scaling.State(), 3)
    telemetry.record("ml", "chat", up, before=2, min_replicas=1, max_replicas=2)
    wanted = {"namespace": "ml", "name": "chat", "direction": "up", "reason": "AboveTarget"}
    deadline = time.monotonic() + 20
    counted: list[float] = []
    while not any(counted) and time.monotonic() < deadline:
        time.sleep(0.5)
        result = _query(scraped, concrete(expr).replace("30s", "1m"))
        counted = [float(s["value"][1]) for s in result if s["metric"] == wanted]
    assert any(v > 0 for v in counted), "the first scale-up of a service shows on the panel"


def test_every_alert_expression_evaluates_and_the_busy_ones_fire(scraped: Prometheus) -> None:
    exprs = alert_exprs()
    assert _eventually_series(scraped, exprs["QwenServiceKVCacheNearFull"])
    assert _eventually_series(scraped, exprs["QwenServiceSlowFirstToken"]), "rates need two scrapes"
    # Other tests of this process may have left series of their own services: look at chat only.
    firing = {}
    for name, expr in exprs.items():
        found = _query(scraped, expr)  # a PromQL error raises here
        firing[name] = [s["metric"] for s in found if mine(s["metric"])]
    chat = {"namespace": "ml", "serving_qwenops_io_service": "chat"}
    assert firing["QwenServiceKVCacheNearFull"] == [chat]
    assert firing["QwenServiceRequestsQueueing"] == [chat]
    waiting = _query(scraped, exprs["QwenServiceRequestsQueueing"])
    assert [s["value"][1] for s in waiting if s["metric"] == chat] == ["20"], "20 waiting per pod"
    assert firing["QwenServiceAtMaxReplicas"] == [{"namespace": "ml", "name": "chat"}]
    assert firing["QwenServiceMetricsUnavailable"] == []
    assert firing["QwenServiceReplicasNotReady"] == []
    assert firing["QwenServiceDegraded"] == []
    assert firing["QwenServiceErrors"] == [], "every request of the capture succeeded"
    # The busy capture's first tokens: 36 of 72 within 2.5 s, all within 5 s (p99 ~4.95 s).
    assert firing["QwenServiceSlowFirstToken"] == [chat]
    assert firing["QwenServiceSlowTokens"] == [], "its tokens came within 25 ms of each other"
    assert firing["QwenOperatorDown"] == [], "the operator's endpoint is scraped"
    assert firing["QwenOperatorMetricQueriesFailing"] == []


def test_every_alert_has_a_runbook_section() -> None:
    """Each alert's runbook_url is the base URL and the alert's anchor, and docs/runbooks.md has a
    section of that name (GitHub makes a heading's anchor from its lower-cased text); no section is
    left for an alert that is gone."""
    base = "https://runbooks.example.com/qwen.md"
    alerts = {
        r["alert"]: r["annotations"]["runbook_url"]
        for g in rules({"monitoring": {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}}})[
            "groups"
        ]
        for r in g["rules"]
    }
    assert alerts == {name: f"{base}#{name.lower()}" for name in alerts}
    sections = {
        line[3:].strip()
        for line in (ROOT / "docs" / "runbooks.md").read_text().splitlines()
        if line.startswith("## ")
    }
    assert sections == set(alerts)
