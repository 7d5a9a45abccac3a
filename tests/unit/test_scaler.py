"""The scaler's tick, driven with its own clock and fleet: what it writes, and when."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from qwen_operator import labels, scaling
from qwen_operator.kube import DEPLOYMENTS, Resource
from qwen_operator.metrics import Target
from qwen_operator.scaler import Autoscaler
from qwen_operator.scaling import Observation, PodSample, State
from qwen_operator.settings import OperatorSettings

NOW = datetime.datetime(2026, 11, 30, 12, tzinfo=datetime.UTC)


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct"},
            "autoscaling": {
                "enabled": True,
                "maxReplicas": 8,
                "targets": {"concurrencyPerReplica": 8},
                "scaleUp": {"maxStepReplicas": 8, "maxStepPercent": 800},
            },
        },
    }


def deployment(name: str) -> dict[str, Any]:
    owner = {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "name": name,
        "uid": f"uid-{name}",
    }
    return {
        "metadata": {"name": name, "namespace": "ml", "ownerReferences": [owner]},
        "spec": {"replicas": 1},
    }


def pod(service_name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{service_name}-0",
            "namespace": "ml",
            "labels": labels.common_labels(service_name),
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class Fleet:
    def __init__(self, names: Sequence[str]) -> None:
        self.names = names

    async def services(self) -> list[dict[str, Any]]:
        return [service(n) for n in self.names]

    async def deployments(self) -> list[dict[str, Any]]:
        return [deployment(n) for n in self.names]

    async def pods(self) -> list[dict[str, Any]]:
        return [pod(n) for n in self.names]


class Cluster:
    """Answers reads from the fleet's objects and records each write with the loop's time."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, str, str]] = []

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return deployment(name) if res == DEPLOYMENTS else service(name)

    async def merge_patch(
        self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        if res == DEPLOYMENTS:
            self.writes.append((asyncio.get_running_loop().time(), name, str(patch["spec"]["replicas"])))
        return {}

    async def create(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(obj)


class Source:
    """A metrics source that answers after ``delay`` seconds with 40 requests in flight per pod."""

    def __init__(self, name: str, delay: float) -> None:
        self.name, self.delay = name, delay

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        await asyncio.sleep(self.delay)
        return {t.key: t.observation({p.name: PodSample(40, 0, 0.3, 0.0) for p in t.pods}) for t in targets}


@pytest.mark.looptime
async def test_a_slow_metrics_source_does_not_delay_the_services_of_a_fast_one() -> None:
    cluster = Cluster()
    scaler = Autoscaler(cluster, OperatorSettings(), clock=lambda: NOW, fleet=Fleet(["fast", "slow"]))  # type: ignore[arg-type]
    fast, slow = Source("fast", 0.1), Source("slow", 5.0)

    async def for_service(svc: Any, _cluster: Any) -> Source:
        return fast if svc.name == "fast" else slow

    scaler.sources.for_service = for_service  # type: ignore[method-assign]
    started = asyncio.get_running_loop().time()
    results = await scaler.tick()
    assert {r.name for r in results} == {"fast", "slow"}
    when = {name: t - started for t, name, _ in cluster.writes}
    assert when["fast"] == pytest.approx(0.1), "scaled as soon as its own source answered"
    assert when["slow"] == pytest.approx(5.0)
    assert {name: replicas for _, name, replicas in cluster.writes} == {"fast": "5", "slow": "5"}


async def test_a_wall_clock_stepped_backwards_does_not_stop_the_evaluations() -> None:
    now = [NOW]
    scaler = Autoscaler(Cluster(), OperatorSettings(), clock=lambda: now[0], fleet=Fleet(["chat"]))  # type: ignore[arg-type]
    fast = Source("fast", 0.0)

    async def for_service(svc: Any, _cluster: Any) -> Source:
        return fast

    scaler.sources.for_service = for_service  # type: ignore[method-assign]
    assert len(await scaler.tick()) == 1
    now[0] = NOW - datetime.timedelta(hours=1)  # NTP corrects a clock that ran an hour ahead
    assert len(await scaler.tick()) == 1, "evaluated, not held until the clock catches up"


async def test_a_pod_gone_before_its_deletion_cost_is_set_does_not_stop_the_scale_down() -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    def three(name: str) -> dict[str, Any]:
        return deployment(name) | {"spec": {"replicas": 3}}

    class Vanishing(Cluster):
        async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
            return three(name) if res == DEPLOYMENTS else service(name)

        async def merge_patch(
            self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
        ) -> dict[str, Any]:
            if res.plural == "pods":
                raise ApiException(status=404, reason="Not Found")
            return await super().merge_patch(res, namespace, name, patch, sub)

    class ThreeReplicas(Fleet):
        async def deployments(self) -> list[dict[str, Any]]:
            return [three(n) for n in self.names]

    class Idle(Source):
        async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
            return {
                t.key: t.observation({p.name: PodSample(0, 0, 0.0, 0.0) for p in t.pods}) for t in targets
            }

    cluster = Vanishing()
    scaler = Autoscaler(cluster, OperatorSettings(), clock=lambda: NOW, fleet=ThreeReplicas(["chat"]))  # type: ignore[arg-type]
    # An hour of unbroken data, no recent scale-up: the idle service may shrink now.
    scaler.memory.states["uid-chat"] = State(
        data_since=NOW - datetime.timedelta(hours=1), last_evaluated=NOW - datetime.timedelta(seconds=15)
    )
    idle = Idle("idle", 0.0)

    async def for_service(svc: Any, _cluster: Any) -> Source:
        return idle

    scaler.sources.for_service = for_service  # type: ignore[method-assign]
    (result,) = await scaler.tick()
    assert result.decision.replicas < 3, result.decision.message
    assert [(name, replicas) for _, name, replicas in cluster.writes] == [
        ("chat", str(result.decision.replicas))
    ]


@pytest.mark.looptime
async def test_a_busy_api_server_gets_one_warning_line_per_tick_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    class Busy(Fleet):
        async def services(self) -> list[dict[str, Any]]:
            raise ApiException(status=429, reason="Too Many Requests")

    scaler = Autoscaler(Cluster(), OperatorSettings(), clock=lambda: NOW, fleet=Busy(["chat"]))  # type: ignore[arg-type]
    task = asyncio.create_task(scaler.run())
    await asyncio.sleep(3 * scaler.config.scaler_tick_seconds - 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = [r for r in caplog.records if r.name.startswith("qwen_operator.scaler")]
    assert len(records) == 3
    assert all(r.levelname == "WARNING" and r.exc_info is None and "429" in r.getMessage() for r in records)


class Store:
    """A fake API server holding one service, its Deployment and pod: the fleet reads it (as the watch
    would report it) and the scaler writes to it; every status write is counted."""

    def __init__(self, name: str, replicas: int) -> None:
        self.svc = service(name)
        self.dep = deployment(name) | {"spec": {"replicas": replicas}}
        self.pods = [
            pod(name) | {"metadata": {**pod(name)["metadata"], "name": f"{name}-{i}"}}
            for i in range(replicas)
        ]
        self.status_writes = 0

    async def services(self) -> list[dict[str, Any]]:
        return [self.svc]

    async def deployments(self) -> list[dict[str, Any]]:
        return [self.dep]

    async def pods_(self) -> list[dict[str, Any]]:
        return self.pods

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self.dep if res == DEPLOYMENTS else self.svc

    async def merge_patch(
        self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        if sub == "status":
            self.status_writes += 1
            merged = {**(self.svc.get("status") or {}), **patch["status"]}
            self.svc = self.svc | {"status": {k: v for k, v in merged.items() if v is not None}}
        elif res == DEPLOYMENTS:
            self.dep = self.dep | {"spec": dict(patch["spec"])}
        return {}

    async def create(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(obj)


class Load:
    """Requests in flight per pod, changed by the test between ticks."""

    name = "load"

    def __init__(self) -> None:
        self.per_pod = 8.0

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        sample = PodSample(self.per_pod, 0, 0.3, 0.0)
        return {t.key: t.observation({p.name: sample for p in t.pods}) for t in targets}


def driven(store: Store) -> tuple[Autoscaler, Load, list[datetime.datetime]]:
    """A scaler on the store's service, its load source and its clock (both set by the test)."""
    now = [NOW]
    fleet = Fleet(["chat"])
    fleet.services, fleet.deployments, fleet.pods = store.services, store.deployments, store.pods_  # type: ignore[method-assign]
    scaler = Autoscaler(store, OperatorSettings(), clock=lambda: now[0], fleet=fleet)  # type: ignore[arg-type]
    load = Load()

    async def for_service(svc: Any, _cluster: Any) -> Load:
        return load

    scaler.sources.for_service = for_service  # type: ignore[method-assign]
    return scaler, load, now


async def test_live_figures_are_written_at_most_once_a_minute_while_the_decision_holds() -> None:
    store = Store("chat", 2)
    scaler, load, now = driven(store)

    async def tick(seconds: float, per_pod: float) -> None:
        now[0] += datetime.timedelta(seconds=seconds)
        load.per_pod = per_pod
        await scaler.tick()

    await tick(0, 8)
    assert store.status_writes == 1, "the first evaluation writes the status"
    for i in range(1, 4):  # 15, 30, 45 s: the load wanders inside the tolerance, 2 replicas hold
        await tick(15, 8 + 0.2 * i)
    assert store.status_writes == 1, "only the figures changed: not written within the minute"
    await tick(15, 7.8)  # 60 s
    assert store.status_writes == 2, "the figures are refreshed once the minute is over"
    assert store.svc["status"]["autoscaling"]["observation"]["concurrency"] == pytest.approx(15.6)
    await tick(15, 30)  # the decision changes: written at once
    assert store.dep["spec"]["replicas"] > 2
    assert store.status_writes == 3


async def test_every_service_exports_its_status_whether_it_autoscales_or_not() -> None:
    """The dashboard's variables and the on-call's first look: phase, replicas, ready and desired for
    every QwenService, gone with the service."""
    from prometheus_client import REGISTRY

    fixed = service("fixed")
    fixed["spec"]["autoscaling"] = {"enabled": False}
    fixed["status"] = {"phase": "Degraded", "replicas": 2, "readyReplicas": 1, "desiredReplicas": 2}
    auto = service("auto")
    auto["status"] = {"phase": "Ready", "replicas": 3, "readyReplicas": 3, "desiredReplicas": 3}

    class Listed(Fleet):
        def __init__(self) -> None:
            super().__init__([])
            self.bodies = [fixed, auto]

        async def services(self) -> list[dict[str, Any]]:
            return self.bodies

    fleet = Listed()
    scaler = Autoscaler(Cluster(), OperatorSettings(), clock=lambda: NOW, fleet=fleet)  # type: ignore[arg-type]
    scaler.memory.states["uid-auto"] = scaling.State(last_evaluated=NOW)  # not due: only the export runs
    await scaler.tick()
    value = REGISTRY.get_sample_value
    fixed_labels = {"namespace": "ml", "name": "fixed"}
    assert value("qwen_operator_service_phase", {**fixed_labels, "phase": "Degraded"}) == 1
    assert value("qwen_operator_service_phase", {**fixed_labels, "phase": "Ready"}) == 0
    assert value("qwen_operator_service_ready_replicas", fixed_labels) == 1
    assert value("qwen_operator_service_desired_replicas", {"namespace": "ml", "name": "auto"}) == 3

    fleet.bodies = [auto]  # "fixed" deleted
    await scaler.tick()
    assert value("qwen_operator_service_phase", {**fixed_labels, "phase": "Degraded"}) is None
    assert value("qwen_operator_service_replicas", fixed_labels) is None


class Counting(Source):
    """A Source that counts its calls, and the most it ever had in flight at once."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(name, delay)
        self.calls = self.inflight = self.most = 0

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        self.calls += 1
        self.inflight += 1
        self.most = max(self.most, self.inflight)
        try:
            return await super().observe(targets)
        finally:
            self.inflight -= 1


@pytest.mark.looptime
async def test_a_source_still_answering_is_skipped_and_never_delays_the_next_tick() -> None:
    """Ticks every second, every service due every second: a source that takes 8 s to answer is asked
    again only once it has answered (never twice at once), and the fast one meanwhile every second."""

    class EverySecond(Fleet):
        async def services(self) -> list[dict[str, Any]]:
            bodies = await super().services()
            for body in bodies:
                body["spec"]["autoscaling"]["evaluationIntervalSeconds"] = 1
            return bodies

    config = OperatorSettings(scaler_tick_seconds=1)
    clock = asyncio.get_running_loop()

    def now() -> datetime.datetime:
        return NOW + datetime.timedelta(seconds=clock.time())

    scaler = Autoscaler(Cluster(), config, clock=now, fleet=EverySecond(["fast", "slow"]))  # type: ignore[arg-type]
    fast, slow = Counting("fast", 0.1), Counting("slow", 8.0)

    async def for_service(svc: Any, _cluster: Any) -> Source:
        return fast if svc.name == "fast" else slow

    scaler.sources.for_service = for_service  # type: ignore[method-assign]
    running = asyncio.create_task(scaler.run())
    await asyncio.sleep(12.05)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert slow.most == 1, "the slow source was asked again while it still answered"
    assert slow.calls == 2  # at 0 s, and at 8 s once it had answered
    assert fast.calls >= 11, f"the fast source was asked {fast.calls} times in 12 s"


async def test_a_deleted_service_is_forgotten() -> None:
    fleet = Fleet(["kept", "gone"])
    scaler = Autoscaler(Cluster(), OperatorSettings(), clock=lambda: NOW, fleet=fleet)  # type: ignore[arg-type]
    fast = Source("fast", 0.0)

    async def for_service(svc: Any, _cluster: Any) -> Source:
        return fast

    scaler.sources.for_service = for_service  # type: ignore[method-assign]
    await scaler.tick()
    scaler.actuator.locks[("ml", "gone")] = asyncio.Lock()  # as the reconcile leaves one
    assert {"uid-kept", "uid-gone"} <= set(scaler.memory.states)
    fleet.names = ["kept"]
    await scaler.tick()
    assert set(scaler.memory.states) == {"uid-kept"}
    assert set(scaler.memory.refreshed) <= {"uid-kept"}
    assert ("ml", "gone") not in scaler.actuator.locks
    assert ("ml", "gone") not in scaler.known


def test_a_prometheus_connection_nobody_asks_for_is_forgotten() -> None:
    from qwen_operator import validation
    from qwen_operator.metrics import PodsSource
    from qwen_operator.sources import IDLE_SOURCE_SECONDS, Sources

    clock = [0.0]
    sources = Sources(OperatorSettings(), PodsSource(), monotonic=lambda: clock[0])
    body = service("chat")
    body["spec"]["autoscaling"]["metrics"] = {"source": "prometheus"}
    svc = validation.parse(body)
    asyncio.run(sources.for_service(svc, None))  # type: ignore[arg-type]
    assert len(sources.prometheus) == 1
    clock[0] = IDLE_SOURCE_SECONDS - 1
    sources.forget_idle()
    assert len(sources.prometheus) == 1
    clock[0] = IDLE_SOURCE_SECONDS + 1
    sources.forget_idle()
    assert sources.prometheus == {}
    assert sources.used == {}


async def test_an_advisory_scaler_reports_what_it_would_do_and_never_touches_the_deployment() -> None:
    """Mode Advisory: each decision goes to status.autoscaling.advisedReplicas and, when it changes,
    to an Advised Event, decided from the last advice as if it had been followed; the Deployment keeps
    its replicas and no pod gets a deletion cost."""
    store = Store("chat", 2)
    store.svc["spec"]["autoscaling"]["mode"] = "Advisory"
    events: list[Mapping[str, Any]] = []

    async def create(res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        events.append(obj)
        return dict(obj)

    store.create = create  # type: ignore[method-assign]
    scaler, load, now = driven(store)
    patches: list[Mapping[str, Any]] = []
    merge_patch = store.merge_patch

    async def counted(
        res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        if sub != "status":
            patches.append(patch)
        return await merge_patch(res, namespace, name, patch, sub)

    store.merge_patch = counted  # type: ignore[method-assign]

    async def tick(seconds: float, per_pod: float) -> dict[str, Any]:
        now[0] += datetime.timedelta(seconds=seconds)
        load.per_pod = per_pod
        await scaler.tick()
        return store.svc["status"]

    first = await tick(0, 24)  # 48 in flight on 2 pods at 8 each: 6 replicas
    assert first["autoscaling"]["advisedReplicas"] == 6
    assert [e["reason"] for e in events] == ["Advised"]
    assert events[0]["message"].startswith("would scale 2 -> 6: concurrency 48 vs target 8 x 2 ready")
    again = await tick(15, 24)
    assert again["autoscaling"]["advisedReplicas"] == 6, "decided from its advice: 6 already"
    assert len(events) == 1, "an Event only when the advice changes"
    assert store.dep["spec"]["replicas"] == 2
    assert patches == [], "neither the Deployment nor a pod was patched"
    assert "desiredReplicas" not in first, "the Deployment's desired count is the reconciler's to say"
    active = next(c for c in first["conditions"] if c["type"] == "ScalingActive")
    assert active["reason"] == "Advisory"
