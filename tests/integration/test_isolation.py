"""Tenant isolation through the real operator (kopf against the emulator) and recording listeners: a
URL is contacted only if the allow-list admits it as sent, no redirect is followed, nothing a server
answers reaches a status, a pod's /metrics is read only up to a bound, and one slow Prometheus never
delays another's evaluations.

Each listener is a real HTTP server on a loopback address; "never contacted" means it saw no request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kopf
import pytest

from qwen_operator import kube
from qwen_tools.emulator import SECRETS, Emulator, run_operator
from tests.fakevllm import GARBAGE, SECRET_BODY, FakePrometheusAPI, free_port
from tests.integration.conftest import DEPLOY, EVENTS, OPERATOR_ENV, QSVC, OperatorThread, eventually
from tests.integration.test_autoscaling import PodPlayer, _playing, autoscaled
from tests.integration.test_credentials import autoscaled as with_prometheus
from tests.integration.test_operator import NS, condition

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "the-service-s-own-token"


def everything_said(emulator: Emulator, name: str) -> str:
    """All a tenant can read about its service: its status (message, conditions) and its Events."""
    body = emulator.get(QSVC, NS, name) or {}
    said = [json.dumps(body.get("status") or {})]
    said += [e.get("message", "") for e in emulator.items(EVENTS, NS)]
    return "\n".join(said)


def metrics_condition(emulator: Emulator, name: str, text: str) -> dict[str, Any] | None:
    cond = condition(emulator.get(QSVC, NS, name), "MetricsAvailable")
    return cond if cond and text in cond["message"] else None


def invalid(emulator: Emulator, name: str) -> dict[str, Any] | None:
    cond = condition(emulator.get(QSVC, NS, name), "InvalidSpec")
    return cond if cond and cond["status"] == "True" else None


def allow(monkeypatch: pytest.MonkeyPatch, entries: str) -> None:
    """Before the operator starts: the Prometheus source, and the admin's allow-list."""
    monkeypatch.setenv("QWEN_OPERATOR_METRICS_SOURCE", "prometheus")
    monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS", entries)


@pytest.fixture
def listener() -> Iterator[FakePrometheusAPI]:
    """A recording listener at a URL the admin allows (tests point services at it, or near it)."""
    rec = FakePrometheusAPI("record")
    yield rec
    rec.close()


async def secret(emulator: Emulator) -> dict[str, Any]:
    token = base64.b64encode(SERVICE_TOKEN.encode()).decode()
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-prom", "namespace": NS}}
    return await emulator.put(SECRETS, {**body, "data": {"token": token}})


# ------------------------------------------------------------------------------------ the allow-list


@pytest.fixture
def dot_segments(listener: FakePrometheusAPI, monkeypatch: pytest.MonkeyPatch) -> str:
    """Allow only the listener's /team-a/; give a URL that climbs out of it."""
    allow(monkeypatch, f"{listener.url}/team-a/")
    return f"{listener.url}/team-a/../team-b"


async def test_a_url_that_climbs_out_of_an_allowed_prefix_is_never_contacted(
    dot_segments: str, listener: FakePrometheusAPI, emulator: Emulator, operator: Any
) -> None:
    await secret(emulator)
    own = {"url": dot_segments, "bearerTokenSecretRef": {"name": "team-prom", "key": "token"}}
    await emulator.put(QSVC, with_prometheus("climber", own))
    await emulator.put(QSVC, with_prometheus("inside", {"url": f"{listener.url}/team-a/x"}))
    await eventually(lambda: listener.seen, within=15, what="the allowed service's queries")
    await asyncio.sleep(2)  # more evaluations of both
    assert {path.split("?")[0] for path, _ in listener.seen} == {"/team-a/x/api/v1/query"}
    assert all(header is None for _, header in listener.seen), "the token went with the climbing URL"
    refused = invalid(emulator, "climber")
    assert refused is not None, "the refusal is in the status"
    assert "prometheus.url" in refused["message"]


@pytest.fixture
def port_80(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePrometheusAPI]:
    """A listener at 127.0.0.3:80, where an HTTP client that ends the host at a backslash connects;
    ``*.allowed.test`` is allowed."""
    allow(monkeypatch, "*.allowed.test")
    try:
        rec = FakePrometheusAPI("record", host="127.0.0.3", port=80)
    except PermissionError:
        pytest.skip("binding port 80 needs root (CI runs as root)")
    yield rec
    rec.close()


async def test_a_backslash_never_takes_a_request_to_another_host(
    port_80: FakePrometheusAPI, emulator: Emulator, operator: Any
) -> None:
    """``http://127.0.0.3\\.allowed.test/`` looks like a host under ``*.allowed.test`` to urllib.parse,
    and urllib3 connects to 127.0.0.3:80 (the listener)."""
    await secret(emulator)
    own = {
        "url": "http://127.0.0.3\\.allowed.test/",
        "bearerTokenSecretRef": {"name": "team-prom", "key": "token"},
    }
    await emulator.put(QSVC, with_prometheus("slash", own))
    await eventually(
        lambda: invalid(emulator, "slash") or port_80.seen, within=10, what="a refusal or a query"
    )
    await asyncio.sleep(2)
    assert port_80.seen == [], "a backslash took the request (and the token) to another host"
    assert invalid(emulator, "slash"), "the refusal is in the status"


# ------------------------------------------------------------------------------- what a server answers


@pytest.fixture
def forbidding(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePrometheusAPI]:
    rec = FakePrometheusAPI("forbidden")
    allow(monkeypatch, f"{rec.url}/")
    yield rec
    rec.close()


async def test_what_a_prometheus_answers_never_reaches_the_status_or_events(
    forbidding: FakePrometheusAPI, emulator: Emulator, operator: Any
) -> None:
    await emulator.put(QSVC, with_prometheus("nosy", {"url": forbidding.url}))
    cond = await eventually(
        lambda: metrics_condition(emulator, "nosy", "HTTP 403"), within=15, what="the failure in the status"
    )
    assert cond["status"] == "False"
    assert f"this service's Prometheus ({forbidding.url}) failed: HTTP 403" in cond["message"]
    await asyncio.sleep(1)
    assert SECRET_BODY.decode() not in everything_said(emulator, "nosy")


@pytest.fixture
def redirecting(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakePrometheusAPI, FakePrometheusAPI]]:
    """(an allowed Prometheus that redirects every query, the listener it redirects to)."""
    there, elsewhere = FakePrometheusAPI("redirect"), FakePrometheusAPI("record")
    there.location = f"{elsewhere.url}/api/v1/query?query=up"
    allow(monkeypatch, f"{there.url}/")
    yield there, elsewhere
    there.close()
    elsewhere.close()


async def test_a_prometheus_redirect_is_not_followed(
    redirecting: tuple[FakePrometheusAPI, FakePrometheusAPI], emulator: Emulator, operator: Any
) -> None:
    there, elsewhere = redirecting
    await secret(emulator)
    own = {"url": there.url, "bearerTokenSecretRef": {"name": "team-prom", "key": "token"}}
    await emulator.put(QSVC, with_prometheus("moved", own))
    await eventually(
        lambda: metrics_condition(emulator, "moved", "HTTP 307 (redirects are not followed)"),
        within=15,
        what="the redirect in the status",
    )
    await asyncio.sleep(1)
    assert there.seen
    assert elsewhere.seen == [], "the operator followed the redirect"


@pytest.fixture
async def pods(pod_port: int, emulator: Emulator, operator: Any) -> AsyncIterator[PodPlayer]:
    async with _playing(PodPlayer(emulator, "qwen", pod_port)) as p:
        yield p


@pytest.fixture
def pod_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port("127.0.0.30")
    monkeypatch.setenv("QWEN_OPERATOR_POD_METRICS_PORT", str(port))
    return port


async def test_a_pod_that_redirects_sends_the_operator_nowhere(
    pods: PodPlayer, listener: FakePrometheusAPI, emulator: Emulator
) -> None:
    pods.mode, pods.location = "redirect", f"{listener.url}/metrics"
    await emulator.put(QSVC, autoscaled())
    await eventually(
        lambda: metrics_condition(emulator, "qwen", "HTTP 302 (redirects are not followed)"),
        within=15,
        what="the redirect in the status",
    )
    await asyncio.sleep(1)
    assert listener.seen == [], "the operator followed a pod's redirect"


async def test_a_pod_s_malformed_metrics_are_named_not_quoted(pods: PodPlayer, emulator: Emulator) -> None:
    pods.mode = "garbage"
    await emulator.put(QSVC, autoscaled())
    await eventually(
        lambda: metrics_condition(emulator, "qwen", "malformed /metrics"), within=15, what="the failure"
    )
    assert "SECRET-FROM-THE-POD" in GARBAGE
    assert "SECRET-FROM-THE-POD" not in everything_said(emulator, "qwen")


@pytest.mark.parametrize("mode", ["huge", "announced"])
async def test_a_pod_s_metrics_are_read_only_up_to_a_bound(
    mode: str, pods: PodPlayer, emulator: Emulator
) -> None:
    """A pod that streams 64 MiB of valid vLLM lines (or announces 64 MiB): the operator stops reading
    at 4 MiB, says so, and holds the replicas."""
    pods.mode = mode
    await emulator.put(QSVC, autoscaled())
    await eventually(
        lambda: metrics_condition(emulator, "qwen", "/metrics larger than 4 MiB"),
        within=20,
        what="the refusal",
    )
    server = next(iter(pods.servers.values()))
    assert server.sent < 16 * 1024 * 1024, f"the operator read {server.sent / 2**20:.0f} MiB"


# ------------------------------------------------------------------------- a slow Prometheus, and others


@pytest.fixture
def trickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakePrometheusAPI, FakePrometheusAPI]]:
    """(a tenant's Prometheus that answers one byte every half second, the operator's own one)."""
    slow, healthy = FakePrometheusAPI("trickle"), FakePrometheusAPI("record")
    monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_URL", healthy.url)
    allow(monkeypatch, f"{slow.url}/")
    monkeypatch.setenv("QWEN_OPERATOR_METRICS_TIMEOUT_SECONDS", "2")
    yield slow, healthy
    slow.close()
    healthy.close()


async def test_a_trickling_prometheus_never_delays_another_source_s_evaluation(
    trickling: tuple[FakePrometheusAPI, FakePrometheusAPI], emulator: Emulator, operator: Any
) -> None:
    slow, healthy = trickling
    await emulator.put(QSVC, with_prometheus("tenant", {"url": slow.url}))
    await emulator.put(QSVC, with_prometheus("plain", {}))
    await eventually(lambda: slow.seen and healthy.seen, within=15, what="queries to both")
    started = time.monotonic()
    await asyncio.sleep(6)  # three of the slow source's deadlines
    times = [t for t in healthy.times if t >= started]
    gaps = [b - a for a, b in zip([started, *times], [*times, time.monotonic()], strict=True)]
    # Its services are due every second; one deadline (2 s) without a query would mean it waited.
    assert max(gaps) < 1.8, f"the healthy Prometheus went {max(gaps):.1f} s without a query"
    cond = await eventually(
        lambda: metrics_condition(emulator, "tenant", "no answer within 2 s"), within=5, what="the deadline"
    )
    assert cond["status"] == "False"
    # One evaluation of the slow source at a time, each cut at its deadline (at most 10 queries each).
    asked = [t for t in slow.times if t >= started]
    assert asked, "the slow source was not asked again"
    assert len(asked) <= 10 * (6 / 2 + 1), "evaluations of the slow source stacked up"


# ------------------------------------------------------------------------- an operator for listed namespaces


@pytest.fixture
async def namespaced(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OperatorThread]:
    """The operator as the chart runs it with watchNamespaces: [NS, "team-x"], on a cluster whose RBAC
    refuses it the namespaces (the emulator answers 403, as such a cluster does)."""
    for key, value in OPERATOR_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QWEN_OPERATOR_NAMESPACES", f"{NS},team-x")

    async def main(stop: threading.Event, ready: threading.Event) -> None:
        settings = kopf.OperatorSettings()
        settings.queueing.idle_timeout = 0.5
        await run_operator(settings, stop, ready, namespaces=[NS, "team-x"])

    running = OperatorThread(main, "namespaced-operator")
    await running.start(10)
    yield running
    await running.stop()
    assert running.error is None, f"the operator crashed: {running.error!r}"


async def test_an_operator_restricted_to_listed_namespaces_acts_there_only(
    emulator: Emulator, namespaced: OperatorThread
) -> None:
    await emulator.put(QSVC, autoscaled())
    outside = autoscaled() | {"metadata": {"name": "qwen", "namespace": "elsewhere"}}
    await emulator.put(QSVC, outside)
    await eventually(
        lambda: emulator.get(DEPLOY, NS, "qwen"), within=15, what="the listed namespace's Deployment"
    )
    await eventually(
        lambda: (emulator.get(QSVC, NS, "qwen") or {}).get("status", {}).get("autoscaling"),
        within=15,
        what="the scaler's first decision in the listed namespace",
    )
    await asyncio.sleep(2)
    assert emulator.get(DEPLOY, "elsewhere", "qwen") is None, "it acted outside its namespaces"
    assert not (emulator.get(QSVC, "elsewhere", "qwen") or {}).get("status")
    assert not emulator.denied, "it asked for what its RBAC does not grant (kopf retries a 403 for a minute)"
    granted = {(c.group, c.resource, verb) for c in kube.API_CALLS for verb in c.verbs}
    assert emulator.audit <= granted
