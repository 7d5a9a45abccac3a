"""The real kopf operator scales a QwenService on load read from real HTTP /metrics endpoints.

The emulator has no ReplicaSet controller or kubelet, so :class:`PodPlayer` plays them: it keeps pods
in line with the Deployment's replicas (removing the lowest pod-deletion-cost first, as a ReplicaSet
does), marks them Ready after a start-up delay, and gives each one a vLLM-format /metrics endpoint on
its own loopback address, where the load is spread as a Service would spread it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import prometheus_client
import pytest

from qwen_operator import labels
from qwen_tools.emulator import Emulator, now, pod_status
from tests.fakevllm import FakeVLLM, free_port
from tests.integration.conftest import DEPLOY, PODS, QSVC, eventually
from tests.integration.test_operator import NS, condition, events, qsvc
from tests.prom import Prometheus

pytestmark = pytest.mark.integration

COST = labels.POD_DELETION_COST_ANNOTATION


class PodPlayer:
    def __init__(
        self,
        emulator: Emulator,
        name: str,
        port: int,
        startup: float = 0.3,
        prometheus: Prometheus | None = None,
    ) -> None:
        self.emulator, self.name, self.startup, self.prometheus = emulator, name, startup, prometheus
        self.scraped: list[str] = []
        self.free = [FakeVLLM(host=f"127.0.0.{30 + i}", port=port) for i in range(6)]
        self.servers: dict[str, FakeVLLM] = {}
        self.total = 0.0  # requests in flight, spread evenly over ready pods
        self.pinned: dict[str, float] = {}  # or per pod
        self.mode = "ok"
        self.location = ""  # where mode "redirect" sends the scraper
        self.busy = False  # serve the under-load capture, counters growing with every scrape
        self.serial = 0
        self.deleted: list[str] = []

    def pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.emulator.items(PODS, NS)
            if p["metadata"].get("labels", {}).get(labels.SERVICE_LABEL) == self.name
        ]

    async def _create(self) -> None:
        server = self.free.pop(0)
        name = f"{self.name}-{self.serial}"
        self.serial += 1
        self.servers[name] = server
        await self.emulator.put(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": labels.common_labels(self.name)},
                "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
                "status": {**pod_status(scheduled=now()), "podIP": server.host},
            },
        )

    async def _ready(self, name: str) -> None:
        await asyncio.sleep(self.startup)
        pod = self.emulator.get(PODS, NS, name)
        if pod is None:
            return
        created = pod["metadata"]["creationTimestamp"]
        status = pod_status(scheduled=created, started=created, ready=now())
        await self.emulator.patch(PODS, NS, name, {"status": status}, sub="status")

    def _cost(self, pod: dict[str, Any]) -> int:
        return int((pod["metadata"].get("annotations") or {}).get(COST, "0"))

    async def run(self) -> None:
        while True:
            dep = self.emulator.get(DEPLOY, NS, self.name)
            want = int(dep["spec"]["replicas"]) if dep else 0
            pods = self.pods()
            for _ in range(want - len(pods)):
                await self._create()
                asyncio.get_running_loop().create_task(self._ready(f"{self.name}-{self.serial - 1}"))
            if len(pods) > want:
                for pod in sorted(pods, key=lambda p: (self._cost(p), p["metadata"]["name"]))[
                    : len(pods) - want
                ]:
                    name = pod["metadata"]["name"]
                    await self.emulator.remove(PODS, NS, name)
                    self.free.append(self.servers.pop(name))
                    self.deleted.append(name)
            ready = [
                p["metadata"]["name"] for p in self.pods() if p.get("status", {}).get("phase") == "Running"
            ]
            if self.prometheus is not None and sorted(self.servers) != self.scraped:
                self.scraped = sorted(self.servers)
                self.prometheus.set_targets(
                    [(self.servers[n].address, NS, n, self.name) for n in self.scraped]
                )
            for name, server in self.servers.items():
                each = self.pinned.get(name, self.total / len(ready) if ready and name in ready else 0)
                server.set(
                    running=each,
                    kv=min(1.0, each / 40),
                    mode=self.mode,
                    busy=self.busy,
                    location=self.location,
                )
            await asyncio.sleep(0.05)

    def close(self) -> None:
        for server in self.free + list(self.servers.values()):
            server.close()


@pytest.fixture
def pod_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port("127.0.0.30")
    monkeypatch.setenv("QWEN_OPERATOR_POD_METRICS_PORT", str(port))
    return port


@pytest.fixture
async def player(pod_port: int, emulator: Emulator, operator: Any) -> AsyncIterator[PodPlayer]:
    async with _playing(PodPlayer(emulator, "qwen", pod_port)) as p:
        yield p


@contextlib.asynccontextmanager
async def _playing(p: PodPlayer) -> AsyncIterator[PodPlayer]:
    task = asyncio.create_task(p.run())
    yield p
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(p.close)


def autoscaled(**autoscaling: Any) -> dict[str, Any]:
    spec = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 4,
        "targets": {"concurrencyPerReplica": 8},
        "evaluationIntervalSeconds": 1,
        "scaleDown": {
            "stabilizationWindowSeconds": 4,
            "cooldownAfterScaleUpSeconds": 2,
            "maxStepReplicas": 1,
        },
        "metrics": {"source": "pods", "staleAfterSeconds": 5},
    }
    spec.update(autoscaling)
    return qsvc(autoscaling=spec)


def replicas(emulator: Emulator) -> int | None:
    dep = emulator.get(DEPLOY, NS, "qwen")
    return dep["spec"]["replicas"] if dep else None


def scaling_status(emulator: Emulator) -> dict[str, Any]:
    return dict((emulator.get(QSVC, NS, "qwen") or {}).get("status", {}).get("autoscaling") or {})


async def test_load_scales_up_then_down_only_after_the_window(emulator: Emulator, player: PodPlayer) -> None:
    await emulator.put(QSVC, autoscaled())
    await eventually(lambda: replicas(emulator) == 1, what="the Deployment at minReplicas")
    await eventually(lambda: scaling_status(emulator).get("observation"), what="a first observation")

    player.total = 30  # 3.75 replicas' worth
    await eventually(lambda: replicas(emulator) == 4, within=10, what="a scale-up to 4")
    (up,) = await eventually(lambda: events(emulator, "qwen", "ScaledUp"), what="a ScaledUp event")
    assert up["message"].startswith("1 -> 4: concurrency 30 vs target 8 x 1 ready"), up["message"]
    status = emulator.get(QSVC, NS, "qwen")["status"]
    assert status["desiredReplicas"] == 4
    assert status["lastScaleTime"]
    assert condition(emulator.get(QSVC, NS, "qwen"), "ScalingActive")["status"] == "True"
    await eventually(
        lambda: scaling_status(emulator).get("observation", {}).get("readyReplicas") == 4, what="4 ready pods"
    )
    assert replicas(emulator) == 4, "no second scale-up for the same load once the pods are ready"

    # Load drops to one pod's worth, all of it on one pod: scale-down waits for the window, then goes
    # one replica at a time, and the busy pod is the one that stays.
    busy = sorted(player.servers)[1]
    player.total, player.pinned = 0, {busy: 6}
    loop = asyncio.get_running_loop()
    dropped = loop.time()
    await eventually(lambda: replicas(emulator) == 3, within=15, what="the first scale-down")
    assert loop.time() - dropped >= 3.5, "scaled down inside the 4 s stabilization window"
    await eventually(lambda: replicas(emulator) == 1, within=15, what="the scale-down to minReplicas")
    await eventually(lambda: len(events(emulator, "qwen", "ScaledDown")) == 3, what="3 ScaledDown events")
    downs = [e["message"] for e in events(emulator, "qwen", "ScaledDown")]
    assert [m.split(":")[0] for m in downs] == ["4 -> 3", "3 -> 2", "2 -> 1"], downs
    await eventually(lambda: len(player.pods()) == 1, what="the surplus pods gone")
    assert [p["metadata"]["name"] for p in player.pods()] == [busy], "the idle pods go first"
    assert player.pods()[0]["metadata"]["annotations"][COST] == "615", "6 requests and KV 0.15"

    sample = prometheus_client.REGISTRY.get_sample_value
    assert sample("qwen_operator_desired_replicas", {"namespace": NS, "name": "qwen"}) == 1
    assert (
        sample(
            "qwen_operator_scaling_decisions_total",
            {"namespace": NS, "name": "qwen", "direction": "up", "reason": "AboveTarget"},
        )
        >= 1
    )
    assert sample("qwen_operator_evaluation_seconds_count") > 0


async def test_missing_metrics_hold_replicas_and_recovery_waits_a_window(
    emulator: Emulator, player: PodPlayer
) -> None:
    player.total = 20
    await emulator.put(QSVC, autoscaled())
    await eventually(lambda: replicas(emulator) == 3, within=10, what="a scale-up to 3")
    await eventually(
        lambda: scaling_status(emulator).get("observation", {}).get("readyReplicas") == 3, what="3 ready"
    )

    player.total, player.mode = 0, "error"  # every /metrics answers 500: no data at all
    await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "MetricsAvailable")) and c["status"] == "False"
        ),
        what="MetricsAvailable=False",
    )
    (warning,) = await eventually(lambda: events(emulator, "qwen", "MetricsUnavailable"), what="a warning")
    assert warning["type"] == "Warning"
    assert "holding 3 replicas: scraping pods failed" in warning["message"]
    await asyncio.sleep(7)  # longer than the window and the cooldown together
    assert replicas(emulator) == 3, "no scale-down without data"
    assert scaling_status(emulator)["reason"] == "MetricsUnavailable"
    assert condition(emulator.get(QSVC, NS, "qwen"), "ScalingActive")["status"] == "False"

    player.mode = "ok"  # back, and idle
    loop = asyncio.get_running_loop()
    back = loop.time()
    await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "MetricsAvailable")) and c["status"] == "True"
        ),
        what="MetricsAvailable=True",
    )
    await eventually(lambda: replicas(emulator) == 2, within=15, what="a scale-down after recovery")
    assert loop.time() - back >= 3.5, "scale-down must wait a full window of fresh data"
    await eventually(lambda: events(emulator, "qwen", "MetricsAvailable"), what="a MetricsAvailable event")


async def test_slo_mode_scales_on_the_token_load_and_latency_the_pods_report(
    emulator: Emulator, player: PodPlayer
) -> None:
    """spec.autoscaling.slo: the pods' counters and histograms, read between two scrapes, drive the
    replicas; the decision says what it rests on, and the learned state lands in the status."""
    player.total, player.busy = 2, True  # few requests in flight, but a heavy token load, slow first tokens
    await emulator.put(QSVC, autoscaled(slo={"timeToFirstTokenSeconds": 2}))
    await eventually(lambda: replicas(emulator) == 4, within=15, what="a scale-up to maxReplicas on tokens")
    ups = await eventually(lambda: events(emulator, "qwen", "ScaledUp"), what="a ScaledUp event")
    assert any(" prompt + " in e["message"] and "TTFT <= 2 s for" in e["message"] for e in ups), ups

    def learned() -> dict[str, Any] | None:
        status = scaling_status(emulator)
        return status if (status.get("state") or {}).get("capacityScale") else None

    status = await eventually(learned, what="the learned capacity in the status")
    assert status["observation"]["promptTokensPerSecond"] > 0
    assert status["observation"]["ttftWithinSloPercent"] < 99, "the capture's first tokens are slow"

    player.busy, player.total = False, 0  # idle: counters stop moving
    await eventually(lambda: replicas(emulator) == 1, within=30, what="the scale-down once idle")
    assert "load 0 prompt + 0 generated tokens/s" in scaling_status(emulator)["message"]


async def test_autoscaling_off_hands_replicas_back_to_the_spec(emulator: Emulator, player: PodPlayer) -> None:
    player.total = 20
    await emulator.put(QSVC, autoscaled())
    await eventually(lambda: replicas(emulator) == 3, within=10, what="a scale-up to 3")
    desired = {"namespace": NS, "name": "qwen"}
    # The gauge is set after the Deployment patch and the status write of the same evaluation.
    await eventually(
        lambda: prometheus_client.REGISTRY.get_sample_value("qwen_operator_desired_replicas", desired) == 3,
        what="the desired-replicas gauge at 3",
    )
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"autoscaling": {"enabled": False}, "replicas": 1}})
    await eventually(lambda: replicas(emulator) == 1, what="spec.replicas back in charge")
    got = await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "ScalingActive")) and c["status"] == "False" and c
        ),
        what="ScalingActive=False",
    )
    assert got["reason"] == "AutoscalingDisabled"
    await asyncio.sleep(2)
    assert replicas(emulator) == 1, "the scaler leaves a service with autoscaling off alone"
    gauge = prometheus_client.REGISTRY.get_sample_value("qwen_operator_desired_replicas", desired)
    assert gauge is None, "no alert should fire on the gauges of a service the scaler left"


@pytest.fixture
def allow_service_prometheus(prometheus: Prometheus, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin allows the test's Prometheus as a per-service URL (before the operator starts)."""
    monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS", prometheus.url)


async def test_scaling_through_a_real_prometheus(
    pod_port: int, emulator: Emulator, prometheus: Prometheus, allow_service_prometheus: None, operator: Any
) -> None:
    """kopf + emulator + Prometheus scraping the pods, with the per-service Prometheus URL."""
    metrics = {"source": "prometheus", "prometheus": {"url": prometheus.url}, "staleAfterSeconds": 10}
    async with _playing(PodPlayer(emulator, "qwen", pod_port, prometheus=prometheus)) as player:
        await emulator.put(QSVC, autoscaled(metrics=metrics))
        await eventually(
            lambda: scaling_status(emulator).get("observation"),
            within=20,
            what="an observation via Prometheus",
        )
        player.total = 20
        await eventually(lambda: replicas(emulator) == 3, within=20, what="a scale-up to 3")
        (up,) = await eventually(lambda: events(emulator, "qwen", "ScaledUp"), what="a ScaledUp event")
        assert up["message"].startswith("1 -> 3: concurrency 20 vs target 8 x 1 ready"), up["message"]
        sample = prometheus_client.REGISTRY.get_sample_value
        assert sample("qwen_operator_metric_queries_total", {"source": "prometheus"}) > 0

        prometheus.stop()  # Prometheus goes away: replicas hold, the user is told
        player.total = 0
        await eventually(
            lambda: (
                f"this service's Prometheus ({prometheus.url}) failed: cannot connect"
                in (scaling_status(emulator).get("message") or "")
            ),
            within=10,
            what="the scaler to report Prometheus down",
        )
        await asyncio.sleep(6)
        assert replicas(emulator) == 3


async def test_a_steady_service_costs_no_api_call(emulator: Emulator, player: PodPlayer) -> None:
    player.total = 12  # 1.5 replicas' worth at 8 per replica: 2 replicas, then steady
    await emulator.put(QSVC, autoscaled())
    await eventually(
        lambda: scaling_status(emulator).get("observation", {}).get("readyReplicas") == 2, what="2 ready"
    )
    await asyncio.sleep(1.5)  # the status of the first evaluation at 2 is written
    evaluations = prometheus_client.REGISTRY.get_sample_value("qwen_operator_evaluation_seconds_count")
    # Every call but the watches' long-running GETs (kopf's, feeding the scaler's caches among others).
    before = {k: n for k, n in emulator.calls.items() if k[2] != "watch"}
    await asyncio.sleep(3)  # three evaluations (one a second)
    after = {k: n for k, n in emulator.calls.items() if k[2] != "watch"}
    ran = prometheus_client.REGISTRY.get_sample_value("qwen_operator_evaluation_seconds_count") - evaluations
    assert ran >= 2, f"{ran} evaluations in 3 s"
    made = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    assert not made, f"API calls while nothing changed (the scaler reads its watch caches): {made}"
    assert replicas(emulator) == 2


async def test_new_pods_awaiting_their_first_scrape_get_no_warning(
    emulator: Emulator, player: PodPlayer
) -> None:
    """Pods turn Ready a little before their first scrape: MetricsAvailable is Unknown
    (AwaitingFirstScrape) meanwhile, with no Warning; pods that stay silent past staleAfterSeconds (5 s
    here) get the Warning, as pods that stop reporting do."""
    player.total, player.mode = 4, "error"  # Ready, but /metrics does not answer yet
    await emulator.put(QSVC, autoscaled())
    awaiting = await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "MetricsAvailable"))
            and c["status"] == "Unknown"
            and c
        ),
        what="MetricsAvailable=Unknown",
    )
    assert awaiting["reason"] == "AwaitingFirstScrape"
    player.mode = "ok"  # the first scrape, within the grace
    await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "MetricsAvailable")) and c["status"] == "True"
        ),
        what="MetricsAvailable=True",
    )
    assert events(emulator, "qwen", "MetricsUnavailable") == [], "no Warning for a first scrape a moment late"
    assert events(emulator, "qwen", "MetricsAvailable") == []


async def test_pods_that_never_report_get_the_warning_after_the_grace(
    emulator: Emulator, player: PodPlayer
) -> None:
    player.total, player.mode = 4, "error"  # Ready, and /metrics never answers
    await emulator.put(QSVC, autoscaled())
    await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "MetricsAvailable")) and c["status"] == "Unknown"
        ),
        what="MetricsAvailable=Unknown",
    )
    seen = asyncio.get_running_loop().time()
    (warning,) = await eventually(lambda: events(emulator, "qwen", "MetricsUnavailable"), what="a warning")
    assert asyncio.get_running_loop().time() - seen >= 4, "the Warning waited for staleAfterSeconds (5 s)"
    assert warning["type"] == "Warning"
    lost = condition(emulator.get(QSVC, NS, "qwen"), "MetricsAvailable")
    assert lost is not None
    assert (lost["status"], lost["reason"]) == ("False", "MetricsUnavailable")


ROUTER_IP = "127.0.0.40"


@pytest.fixture
def router_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port(ROUTER_IP)
    monkeypatch.setenv("QWEN_OPERATOR_ROUTER_METRICS_PORT", str(port))
    return port


@pytest.fixture
async def routed(
    pod_port: int, router_port: int, emulator: Emulator, operator: Any
) -> AsyncIterator[tuple[PodPlayer, Any, str]]:
    """The pods played as above, and a real router (qwen_router) on the router pod's address."""
    from aiohttp import web

    from qwen_router.app import Config, Router

    router = Router(Config(hold_seconds=60, keepalive_seconds=0.2))
    runner = web.AppRunner(router.app(), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, ROUTER_IP, router_port).start()
    async with _playing(PodPlayer(emulator, "qwen", pod_port)) as p:
        yield p, router, f"http://{ROUTER_IP}:{router_port}"
    await runner.cleanup()


async def test_an_idle_service_sleeps_and_a_request_held_at_the_router_wakes_it(
    emulator: Emulator, routed: tuple[PodPlayer, Any, str]
) -> None:
    """minReplicas 0 behind the real router: idle past zeroAfterIdleSeconds, the Deployment goes to 0
    (ScaledToZero True); a streaming request then waits at the router with keepalives, the scaler reads
    the router's queue and brings a replica back within seconds, and once it is ready the request is
    answered in full: no client error."""
    import aiohttp

    from tests.integration.test_router import CHAT, Engine, serve

    player, router, url = routed
    body = autoscaled(minReplicas=0, maxReplicas=2, scaleDown={
        "stabilizationWindowSeconds": 2, "cooldownAfterScaleUpSeconds": 1, "zeroAfterIdleSeconds": 3,
    })  # fmt: skip
    body["spec"]["routing"] = {"mode": "Builtin"}
    await emulator.put(QSVC, body)
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen-router"), what="the router's Deployment")
    ready = [{"type": "Ready", "status": "True"}]
    await emulator.put(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "qwen-router-0", "namespace": NS, "labels": labels.router_labels("qwen")},
        "spec": {"containers": [{"name": "router", "image": "router"}]},
        "status": {"phase": "Running", "podIP": ROUTER_IP, "conditions": ready},
    })  # fmt: skip
    await eventually(lambda: replicas(emulator) == 1, what="a new service starting with one replica")
    await eventually(lambda: replicas(emulator) == 0, within=20, what="the idle service at zero")
    # The Deployment is patched before the status that says why is written: wait for the status too.
    asleep = await eventually(
        lambda: (
            (condition(emulator.get(QSVC, NS, "qwen"), "ScaledToZero") or {}).get("status") == "True"
            and condition(emulator.get(QSVC, NS, "qwen"), "ScaledToZero")
        ),
        what="ScaledToZero True",
    )
    assert asleep["reason"] == "Idle", asleep
    await eventually(lambda: not player.pods(), what="the pods gone")

    engine = Engine(chunks=3)
    app = web_app(engine)
    runner, engine.url = await serve(app)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}) as r,
        ):
            assert r.status == 200
            assert (await r.content.readline()).startswith(b": waiting"), "a keepalive while held"
            loop = asyncio.get_running_loop()
            held = loop.time()
            await eventually(lambda: replicas(emulator) == 1, within=10, what="a replica woken")
            woke = loop.time() - held
            pod = await eventually(
                lambda: next(
                    (p for p in player.pods() if p.get("status", {}).get("phase") == "Running"), None
                ),
                what="the woken pod ready",
            )
            router.set_engines({pod["metadata"]["name"]: engine.url})  # its EndpointSlice, played
            rest = await r.content.read()
        assert rest.rstrip().endswith(b"data: [DONE]"), rest[-200:]
        assert b"error" not in rest
        assert woke < 5, f"woken {woke:.1f} s after the request was held (evaluation every 1 s)"
        wake = events(emulator, "qwen", "ScaledUp")
        assert any(
            "0 -> 1: waking from zero: 1 request(s) held at the router" in e["message"] for e in wake
        ), wake
    finally:
        await runner.cleanup()


def web_app(engine: Any) -> Any:
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/chat/completions", engine.completions)
    return app
