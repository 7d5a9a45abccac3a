"""The periodic evaluation: one loop per operator scales every QwenService that has autoscaling on.

Each tick it lists QwenServices, their Deployments and ready pods (three list calls for all of them),
asks each metrics source once for all the services that use it (batched), runs the pure
:func:`~qwen_operator.scaling.decide` per service, and writes only what changed: the Deployment's
``spec.replicas``, ``pod-deletion-cost`` annotations before a scale-down, the status, and an Event
per change. A service with something to write is read again and decided again under its lock first;
a steady one costs nothing beyond the three lists. kopf-free, so tests drive :meth:`Autoscaler.tick`
with their own clock.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qwen_operator import api, labels, reconcile, scaling, status, telemetry, validation
from qwen_operator.kube import DEPLOYMENTS, EVENTS, PODS, QWENSERVICES, Resource, list_watched
from qwen_operator.metrics import MetricsSource, PodRef, PodsSource, Target
from qwen_operator.settings import OperatorSettings
from qwen_operator.sources import SourceRefused, Sources

log = logging.getLogger(__name__)
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={labels.MANAGED_BY}"


class ClusterAPI(reconcile.ClusterAPI, Protocol):
    async def list(
        self, res: Resource, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]: ...


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Serving: Running, Ready condition True, not terminating."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    st = pod.get("status") or {}
    if st.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


@dataclass
class Evaluated:
    """What one evaluation of one service did (for logs and tests)."""

    namespace: str
    name: str
    decision: scaling.Decision
    previous: int
    outcome: reconcile.Outcome = field(default_factory=reconcile.Outcome)


class Autoscaler:
    def __init__(
        self,
        cluster: ClusterAPI,
        config: OperatorSettings,
        locks: dict[tuple[str, str], asyncio.Lock] | None = None,
        clock: Callable[[], datetime.datetime] = utcnow,
        pods_source: MetricsSource | None = None,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.locks = locks if locks is not None else {}
        self.clock = clock
        self.memory: dict[str, scaling.State] = {}  # by uid; last_evaluated lives only here
        self.exported: set[tuple[str, str]] = set()  # services with per-service gauges
        self.sources = Sources(
            config,
            pods_source or PodsSource(port=config.pod_metrics_port, timeout=config.metrics_timeout_seconds),
        )

    # ------------------------------------------------------------------------------------ loop

    async def run(self, cluster: Callable[[], ClusterAPI] | None = None) -> None:
        """Evaluate forever; a failing tick is logged and the next one tries again.

        ``cluster`` gives the current client each tick (a re-login replaces it).
        """
        while True:
            if cluster is not None:
                self.cluster = cluster()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaler tick failed")
            await asyncio.sleep(self.config.scaler_tick_seconds)

    async def _list(self, res: Resource, selector: str | None = None) -> list[dict[str, Any]]:
        return await list_watched(self.cluster, res, self.config.namespaces, selector)

    def _due(self, svc: api.QwenService, now: datetime.datetime) -> bool:
        last = self.memory.get(svc.metadata.uid or "", scaling.State()).last_evaluated
        return (
            last is None or (now - last).total_seconds() >= svc.spec.autoscaling.evaluation_interval_seconds
        )

    async def tick(self) -> list[Evaluated]:
        """One evaluation of every service that is due."""
        started = time.monotonic()
        now = self.clock()
        due: list[api.QwenService] = []
        bodies: dict[tuple[str, str], Mapping[str, Any]] = {}
        listed = await self._list(QWENSERVICES)
        alive = {body["metadata"].get("uid") for body in listed}
        for uid in [uid for uid in self.memory if uid not in alive]:
            del self.memory[uid]  # deleted services
        exported = {
            (body["metadata"]["namespace"], body["metadata"]["name"])
            for body in listed
            if (body.get("spec", {}).get("autoscaling") or {}).get("enabled")
        }
        for key in self.exported - exported:
            telemetry.forget(*key)  # deleted, or autoscaling switched off
        self.exported = exported
        for body in listed:
            try:
                svc = validation.parse(body, self.config.policy())
            except validation.InvalidSpec:
                continue  # the reconcile reports it
            if (
                svc.spec.autoscaling.enabled
                and self._due(svc, now)
                and not body["metadata"].get("deletionTimestamp")
            ):
                due.append(svc)
                bodies[svc.namespace, svc.name] = body
        if not due:
            return []
        deployments = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d
            for d in await self._list(DEPLOYMENTS, MANAGED_SELECTOR)
        }
        ready: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for pod in await self._list(PODS, MANAGED_SELECTOR):
            meta = pod["metadata"]
            owner = (meta.get("labels") or {}).get(labels.SERVICE_LABEL)
            if owner and is_ready(pod):
                ready[meta["namespace"], owner].append(pod)

        groups: dict[MetricsSource, list[Target]] = defaultdict(list)
        failed: dict[tuple[str, str], str] = {}
        targets: dict[tuple[str, str], tuple[api.QwenService, Target, list[dict[str, Any]]]] = {}
        for svc in due:
            dep = deployments.get((svc.namespace, svc.name))
            if dep is None or not reconcile.owned_by(dep, svc):
                continue  # nothing to scale yet, or not ours: the reconcile says so
            pods = sorted(ready[svc.namespace, svc.name], key=lambda p: str(p["metadata"]["name"]))
            target = Target(
                svc.namespace,
                svc.name,
                int(dep.get("spec", {}).get("replicas", 1)),
                tuple(PodRef(p["metadata"]["name"], (p.get("status") or {}).get("podIP")) for p in pods),
            )
            targets[target.key] = (svc, target, pods)
            try:
                groups[await self.sources.for_service(svc, self.cluster)].append(target)
            except SourceRefused as exc:
                failed[target.key] = str(exc)

        observed: dict[tuple[str, str], scaling.Observation] = {}
        answers = await asyncio.gather(*(source.observe(ts) for source, ts in groups.items()))
        for answer in answers:
            observed.update(answer)
        for key, error in failed.items():
            observed[key] = targets[key][1].observation({}, error)

        results = []
        for key, obs in observed.items():
            svc, _, pods = targets[key]
            try:
                results.append(await self._act(svc, bodies[key], obs, pods, now))
            except (LookupError, validation.InvalidSpec) as exc:
                log.info("not scaling %s/%s: %s", *key, exc)  # changed since the list; the reconcile acts
            except Exception:
                log.exception("scaling %s/%s failed", *key)
        telemetry.EVALUATION_SECONDS.observe(time.monotonic() - started)
        return results

    # ------------------------------------------------------------------------------------- act

    def _decide(
        self, svc: api.QwenService, obs: scaling.Observation, now: datetime.datetime
    ) -> tuple[scaling.Decision, api.QwenServiceStatus]:
        """The pure decision for one service, and the status it leads to (no I/O)."""
        state = self.memory.get(svc.metadata.uid or "") or scaling.state_from_status(svc.status)
        decision = scaling.decide(obs, svc.spec.scaling(), state, now)
        return decision, status.scaling_status(svc.status, decision, rfc3339(now), svc.metadata.generation)

    async def _act(
        self,
        svc: api.QwenService,
        body: Mapping[str, Any],
        obs: scaling.Observation,
        pods: Sequence[Mapping[str, Any]],
        now: datetime.datetime,
    ) -> Evaluated:
        decision, new = self._decide(svc, obs, now)
        if decision.replicas == obs.replicas and status.status_patch(new) == (body.get("status") or {}):
            # Nothing to write (the steady state): the copy listed this tick is enough. No GET, no lock,
            # so an idle cycle costs three list calls whatever the number of services.
            self.memory[svc.metadata.uid or ""] = decision.state
            result = Evaluated(svc.namespace, svc.name, decision, obs.replicas)
        else:
            svc, result = await self._write(svc, obs, pods, now)
        auto = svc.spec.autoscaling
        telemetry.record(
            svc.namespace, svc.name, result.decision, obs.replicas, auto.min_replicas, auto.max_replicas
        )
        return result

    async def _write(
        self,
        svc: api.QwenService,
        obs: scaling.Observation,
        pods: Sequence[Mapping[str, Any]],
        now: datetime.datetime,
    ) -> tuple[api.QwenService, Evaluated]:
        """Decide again on a fresh copy under the service's lock (the reconcile may have written since the
        list), then write what changed: replicas, deletion costs, status, Events."""
        key = (svc.namespace, svc.name)
        async with self.locks.setdefault(key, asyncio.Lock()):
            fresh = await self.cluster.get(QWENSERVICES, *key)
            if fresh is None or fresh["metadata"].get("uid") != svc.metadata.uid:
                raise LookupError(f"QwenService {key[0]}/{key[1]} is gone")
            svc = validation.parse(fresh, self.config.policy())
            if not svc.spec.autoscaling.enabled:
                raise LookupError(f"QwenService {key[0]}/{key[1]} turned autoscaling off")
            decision, new = self._decide(svc, obs, now)
            self.memory[svc.metadata.uid or ""] = decision.state
            result = Evaluated(svc.namespace, svc.name, decision, obs.replicas)
            out = result.outcome
            if decision.replicas < obs.replicas:
                await self._mark_deletion_costs(svc.namespace, pods, scaling.deletion_costs(obs), out)
            if decision.replicas != obs.replicas:
                patch = {"spec": {"replicas": decision.replicas}}
                await self.cluster.merge_patch(DEPLOYMENTS, svc.namespace, svc.name, patch)
                out.writes += 1
                verb = "ScaledUp" if decision.replicas > obs.replicas else "ScaledDown"
                message = f"{obs.replicas} -> {decision.replicas}: {decision.message}"
                out.events.append(reconcile.Event("Normal", verb, message))
                log.info("%s/%s %s %s", svc.namespace, svc.name, verb, message)
            old_available = _condition(svc.status, status.METRICS_AVAILABLE)
            new_available = _condition(new, status.METRICS_AVAILABLE)
            # Warn when ready pods stop reporting; no ready pods yet (a new service) is not worth one.
            lost, found = ("False", "MetricsUnavailable"), ("True", "MetricsAvailable")
            if new_available == lost != old_available:
                out.events.append(reconcile.Event("Warning", "MetricsUnavailable", decision.message))
            if new_available == found and old_available == lost:
                out.events.append(reconcile.Event("Normal", "MetricsAvailable", decision.message))
            await reconcile.write_status(self.cluster, fresh, new, out)
            await create_events(self.cluster, fresh, out.events, now)
        return svc, result

    async def _mark_deletion_costs(
        self,
        namespace: str,
        pods: Sequence[Mapping[str, Any]],
        costs: Mapping[str, int],
        out: reconcile.Outcome,
    ) -> None:
        """Annotate the ready pods so the ReplicaSet removes the least-loaded ones first."""
        for pod in pods:
            name = pod["metadata"]["name"]
            if name not in costs:
                continue
            value = str(costs[name])
            if (pod["metadata"].get("annotations") or {}).get(labels.POD_DELETION_COST_ANNOTATION) == value:
                continue
            patch = {"metadata": {"annotations": {labels.POD_DELETION_COST_ANNOTATION: value}}}
            await self.cluster.merge_patch(PODS, namespace, name, patch)
            out.writes += 1


def _condition(st: api.QwenServiceStatus, type_: str) -> tuple[str, str] | None:
    return next(((c.status, c.reason) for c in st.conditions if c.type == type_), None)


async def create_events(
    cluster: reconcile.ClusterAPI,
    obj: Mapping[str, Any],
    events: Sequence[reconcile.Event],
    now: datetime.datetime,
) -> None:
    """Post Events about a QwenService through the API (where kopf's poster is not available)."""
    for event in events:
        await cluster.create(EVENTS, event_body(obj, event, now))


def event_body(obj: Mapping[str, Any], event: reconcile.Event, now: datetime.datetime) -> dict[str, Any]:
    """A core/v1 Event about a QwenService."""
    meta = obj["metadata"]
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": labels.MANAGED_BY},
        "reportingComponent": labels.MANAGED_BY,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
