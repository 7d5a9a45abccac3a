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
from dataclasses import replace
from typing import Any

from qwen_operator import api, scaling, telemetry, validation
from qwen_operator.clock import utcnow
from qwen_operator.fleet import Fleet, ListedFleet
from qwen_operator.kube import ClusterAPI, NotLeading, is_conflict, is_transient, summary
from qwen_operator.metrics import MetricsSource, PodsSource, RouterReader
from qwen_operator.objects import key
from qwen_operator.scaler.actuate import Actuator, Changed, Evaluated
from qwen_operator.scaler.memory import Memory
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
        router_reader: RouterReader | None = None,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.clock = clock
        self.fleet = fleet or ListedFleet(cluster, config.namespaces)
        self.memory = Memory()  # what is kept for each service between evaluations, by uid
        self.exported: set[tuple[str, str]] = set()  # autoscaled services with per-service gauges
        self.known: set[tuple[str, str]] = set()  # every service, with its status gauges
        self.actuator = Actuator(
            cluster,
            config.policy(),
            locks if locks is not None else {},
            self.memory,
            refresh_seconds=config.status_refresh_seconds,
        )
        self.pods_source = pods_source or PodsSource(
            port=config.pod_metrics_port, timeout=config.metrics_timeout_seconds
        )
        self.sources = Sources(config, self.pods_source)
        self.routers = router_reader or RouterReader(
            config.router_metrics_port, config.metrics_timeout_seconds
        )
        # What is being evaluated now: a source that still answers a previous tick is skipped (its
        # services stay due), never asked twice at once; nor is a service evaluated twice at once.
        self.inflight_sources: set[MetricsSource] = set()
        self.inflight_services: set[str] = set()

    def use(self, cluster: ClusterAPI) -> None:
        """After a re-login: write (and read Secrets) with the new client."""
        self.cluster = self.actuator.cluster = cluster

    async def run(self, cluster: Callable[[], ClusterAPI] | None = None) -> None:
        """Evaluate forever: a tick every ``scaler_tick_seconds``, each in its own task, so that a
        source still answering (within its own deadline) never delays the next tick for the others; a
        failing tick is logged and the next one tries again.

        ``cluster`` gives the current client each tick (a re-login replaces it).
        """
        ticks: set[asyncio.Task[None]] = set()
        try:
            while True:
                if cluster is not None:
                    self.use(cluster())
                task = asyncio.create_task(self._logged_tick())
                ticks.add(task)
                task.add_done_callback(ticks.discard)
                await asyncio.sleep(self.config.scaler_tick_seconds)
        finally:
            for task in ticks:
                task.cancel()
            await asyncio.gather(*ticks, return_exceptions=True)

    async def _logged_tick(self) -> None:
        try:
            await self.tick()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):  # busy or restarting: one line, and the next tick tries again
                log.warning("scaler tick skipped: the API server answered %s", getattr(exc, "status", exc))
            else:
                log.exception("scaler tick failed")

    def _due(self, svc: api.QwenService, now: datetime.datetime) -> bool:
        last = self.memory.states.get(svc.metadata.uid or "", scaling.State()).last_evaluated
        if last is None:
            return True
        elapsed = (now - last).total_seconds()
        # A wall clock stepped backwards makes the elapsed time negative: evaluate rather than wait.
        return elapsed < 0 or elapsed >= svc.spec.autoscaling.evaluation_interval_seconds

    def _forget_deleted(self, listed: list[Mapping[str, Any]]) -> None:
        """Everything the scaler keeps per service, forgotten in one place once the service is gone."""
        self.memory.forget({body["metadata"].get("uid") for body in listed})
        exported = {
            key(body) for body in listed if (body.get("spec", {}).get("autoscaling") or {}).get("enabled")
        }
        for gone in self.exported - exported:
            telemetry.forget(*gone)  # deleted, or autoscaling switched off
        self.exported = exported
        known = {key(body) for body in listed}
        for gone in self.known - known:
            telemetry.forget_service(*gone)
            lock = self.actuator.locks.get(gone)
            if lock is not None and not lock.locked():  # the reconcile's and ours (one dict)
                del self.actuator.locks[gone]
        self.known = known
        self.sources.forget_idle()
        for body in listed:  # every service, autoscaled or not: what its status says
            telemetry.record_service(*key(body), body.get("status") or {})

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
        pods = await self.fleet.pods()
        found = candidates(due, await self.fleet.deployments(), pods)
        todo = [c for c in found if (c.svc.metadata.uid or "") not in self.inflight_services]
        groups: dict[MetricsSource, list[Candidate]] = defaultdict(list)
        refused: list[tuple[Candidate, scaling.Observation]] = []
        for c in todo:
            try:
                groups[await self.sources.for_service(c.svc, self.cluster)].append(c)
            except SourceRefused as exc:
                refused.append((c, c.target.observation({}, str(exc))))
        busy = [source for source in groups if source in self.inflight_sources]
        for source in busy:
            waiting = len(groups[source])
            log.info("%s: its previous evaluation still runs; its %d services wait", source.name, waiting)
            del groups[source]
        results: list[Evaluated] = []
        # Each source's services are acted on as soon as its answer is in: one slow source (within its
        # own deadline) never delays the services of the others.
        await asyncio.gather(
            self._observe_and_act(None, [c for c, _ in refused], now, results, refused),
            *(self._observe_and_act(source, group, now, results) for source, group in groups.items()),
        )
        telemetry.EVALUATION_SECONDS.observe(time.monotonic() - started)
        return results

    async def _observe_and_act(
        self,
        source: MetricsSource | None,
        group: list[Candidate],
        now: datetime.datetime,
        results: list[Evaluated],
        refused: list[tuple[Candidate, scaling.Observation]] | None = None,
    ) -> None:
        """One batched call to ``source`` for all its services, then each service's decision (without a
        source: the services whose source was refused, with the observation that says why)."""
        uids = {c.svc.metadata.uid or "" for c in group}
        if source is not None:
            self.inflight_sources.add(source)
        self.inflight_services |= uids
        try:
            if source is None:
                pairs = refused or []
            else:
                observed = await source.observe([c.target for c in group])
                pairs = [(c, observed[c.target.key]) for c in group]
            routed = await self.routers.read([c.target for c, _ in pairs])
            pairs = [(c, replace(o, router=routed.get(c.target.key, o.router))) for c, o in pairs]
            await self._act_all(pairs, now, results)
        finally:
            self.inflight_sources.discard(source)
            self.inflight_services -= uids

    async def _act_all(
        self,
        pairs: list[tuple[Candidate, scaling.Observation]],
        now: datetime.datetime,
        results: list[Evaluated],
    ) -> None:
        for candidate, obs in pairs:
            try:
                results.append(await self.actuator.act(candidate, obs, now))
            except (Changed, validation.InvalidSpec) as exc:
                log.info("not scaling %s/%s: %s", *candidate.target.key, exc)  # the reconcile acts
            except NotLeading as exc:  # the Lease is lost: the runner stops this loop
                log.warning("not scaling %s/%s: %s", *candidate.target.key, exc)
            except Exception as exc:
                if is_transient(exc) or is_conflict(exc):  # the next evaluation tries again
                    log.warning("scaling %s/%s skipped: %s", *candidate.target.key, summary(exc))
                else:
                    log.exception("scaling %s/%s failed", *candidate.target.key)
