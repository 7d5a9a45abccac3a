"""The evaluation loop: which services are due, and the tick that evaluates them together.

Each tick reads the services, their Deployments and pods from a :class:`~qwen_operator.fleet.Fleet`
(watch caches in the operator: no API call), asks each metrics source once for all the services that
use it (batched), and hands each service to the :class:`~.actuate.Actuator`. kopf-free, so tests drive
:meth:`Autoscaler.tick` with their own clock and fleet.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from qwen_operator import api, scaling, telemetry, validation
from qwen_operator.clock import utcnow
from qwen_operator.fleet import Fleet, ListedFleet
from qwen_operator.kube import ClusterAPI
from qwen_operator.metrics import MetricsSource, PodsSource, Target
from qwen_operator.objects import key
from qwen_operator.scaler.actuate import Actuator, Evaluated
from qwen_operator.scaler.targets import Candidate, candidates
from qwen_operator.settings import OperatorSettings
from qwen_operator.sources import SourceRefused, Sources

log = logging.getLogger(__name__)


class Autoscaler:
    def __init__(
        self,
        cluster: ClusterAPI,
        config: OperatorSettings,
        locks: dict[tuple[str, str], asyncio.Lock] | None = None,
        clock: Callable[[], datetime.datetime] = utcnow,
        pods_source: MetricsSource | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.clock = clock
        self.fleet = fleet or ListedFleet(cluster, config.namespaces)
        self.states: dict[str, scaling.State] = {}  # by uid; last_evaluated lives only here
        self.exported: set[tuple[str, str]] = set()  # services with per-service gauges
        self.actuator = Actuator(cluster, config.policy(), locks if locks is not None else {}, self.states)
        self.sources = Sources(
            config,
            pods_source or PodsSource(port=config.pod_metrics_port, timeout=config.metrics_timeout_seconds),
        )

    def use(self, cluster: ClusterAPI) -> None:
        """After a re-login: write (and read Secrets) with the new client."""
        self.cluster = self.actuator.cluster = cluster

    async def run(self, cluster: Callable[[], ClusterAPI] | None = None) -> None:
        """Evaluate forever; a failing tick is logged and the next one tries again.

        ``cluster`` gives the current client each tick (a re-login replaces it).
        """
        while True:
            if cluster is not None:
                self.use(cluster())
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaler tick failed")
            await asyncio.sleep(self.config.scaler_tick_seconds)

    def _due(self, svc: api.QwenService, now: datetime.datetime) -> bool:
        last = self.states.get(svc.metadata.uid or "", scaling.State()).last_evaluated
        return (
            last is None or (now - last).total_seconds() >= svc.spec.autoscaling.evaluation_interval_seconds
        )

    def _forget_deleted(self, listed: list[Mapping[str, Any]]) -> None:
        alive = {body["metadata"].get("uid") for body in listed}
        for uid in [uid for uid in self.states if uid not in alive]:
            del self.states[uid]
        exported = {
            key(body) for body in listed if (body.get("spec", {}).get("autoscaling") or {}).get("enabled")
        }
        for gone in self.exported - exported:
            telemetry.forget(*gone)  # deleted, or autoscaling switched off
        self.exported = exported

    async def tick(self) -> list[Evaluated]:
        """One evaluation of every service that is due."""
        started = time.monotonic()
        now = self.clock()
        listed = list(await self.fleet.services())
        self._forget_deleted(listed)
        policy = self.config.policy()
        due: list[tuple[api.QwenService, Mapping[str, Any]]] = []
        for body in listed:
            try:
                svc = validation.parse(body, policy)
            except validation.InvalidSpec:
                continue  # the reconcile reports it
            if (
                svc.spec.autoscaling.enabled
                and self._due(svc, now)
                and not body["metadata"].get("deletionTimestamp")
            ):
                due.append((svc, body))
        if not due:
            return []
        todo = {
            c.target.key: c for c in candidates(due, await self.fleet.deployments(), await self.fleet.pods())
        }
        observed = await self._observe(todo)
        results = []
        for target_key, obs in observed.items():
            try:
                results.append(await self.actuator.act(todo[target_key], obs, now))
            except (LookupError, validation.InvalidSpec) as exc:
                log.info("not scaling %s/%s: %s", *target_key, exc)  # changed since read; the reconcile acts
            except Exception:
                log.exception("scaling %s/%s failed", *target_key)
        telemetry.EVALUATION_SECONDS.observe(time.monotonic() - started)
        return results

    async def _observe(
        self, todo: Mapping[tuple[str, str], Candidate]
    ) -> dict[tuple[str, str], scaling.Observation]:
        """Each service's observation: one batched call per metrics source for all its services."""
        groups: dict[MetricsSource, list[Target]] = defaultdict(list)
        refused: dict[tuple[str, str], str] = {}
        for target_key, c in todo.items():
            try:
                groups[await self.sources.for_service(c.svc, self.cluster)].append(c.target)
            except SourceRefused as exc:
                refused[target_key] = str(exc)
        observed: dict[tuple[str, str], scaling.Observation] = {}
        for answer in await asyncio.gather(*(source.observe(ts) for source, ts in groups.items())):
            observed.update(answer)
        for target_key, error in refused.items():
            observed[target_key] = todo[target_key].target.observation({}, error)
        return observed
