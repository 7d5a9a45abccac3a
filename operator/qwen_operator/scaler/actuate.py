"""One service's evaluation: the pure decision, and what it leads to.

In the steady state (same replicas, same status) nothing is written and nothing is read. Otherwise,
under the service's lock, the QwenService and its Deployment are read again (the reconcile, a user or
another writer may have changed them since the watch reported them), the decision is made again on
those copies, and then written: ``pod-deletion-cost`` on the ready pods before a scale-down, the
Deployment's ``spec.replicas``, the status, and an Event per change.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from qwen_operator import api, labels, scaling, status, telemetry, validation
from qwen_operator.kube import DEPLOYMENTS, PODS, QWENSERVICES, ClusterAPI, is_not_found
from qwen_operator.objects import rfc3339
from qwen_operator.outcome import Event, Outcome
from qwen_operator.scaler.memory import Memory
from qwen_operator.scaler.targets import Candidate
from qwen_operator.scaling import Capacity
from qwen_operator.writes import create_events, write_status

log = logging.getLogger(__name__)


class Changed(Exception):
    """The service changed since it was read (deleted, replaced, autoscaling off): skip it this time;
    the reconcile acts on the change."""


@dataclass
class Evaluated:
    """What one evaluation of one service did (for logs and tests)."""

    namespace: str
    name: str
    decision: scaling.Decision
    previous: int
    outcome: Outcome = field(default_factory=Outcome)


class Actuator:
    """Decides for one service and writes what changed. ``memory`` holds what the scaler keeps for each
    service between evaluations (:class:`~.memory.Memory`)."""

    def __init__(
        self,
        cluster: ClusterAPI,
        policy: validation.Policy,
        locks: dict[tuple[str, str], asyncio.Lock],
        memory: Memory,
        refresh_seconds: float = 60.0,
    ) -> None:
        self.cluster, self.policy, self.locks, self.memory = cluster, policy, locks, memory
        # While the decision and the conditions hold, the status's live figures are refreshed at most
        # this often (QWEN_OPERATOR_STATUS_REFRESH_SECONDS).
        self.refresh_seconds = refresh_seconds

    def decide(
        self, svc: api.QwenService, obs: scaling.Observation, now: datetime.datetime
    ) -> tuple[scaling.Decision, api.QwenServiceStatus]:
        """The pure decision for one service, and the status it leads to (no I/O)."""
        state = self.memory.states.get(svc.metadata.uid or "") or scaling.state_from_status(svc.status)
        seed = Capacity(*svc.spec.seed_capacity())
        decision = scaling.decide(obs, svc.spec.scaling(), state, now, seed)
        return decision, status.scaling_status(
            svc.status,
            decision,
            rfc3339(now),
            svc.metadata.generation,
            grace_seconds=svc.spec.autoscaling.metrics.stale_after_seconds,
            advisory=not svc.spec.autoscaling.owns_replicas,
            can_sleep=svc.spec.scales_to_zero,
        )

    async def act(self, candidate: Candidate, obs: scaling.Observation, now: datetime.datetime) -> Evaluated:
        svc = candidate.svc
        uid = svc.metadata.uid or ""
        obs = advised(svc, obs)
        decision, new = self.decide(svc, obs, now)
        patch, old = status.status_patch(new), candidate.body.get("status") or {}
        last = self.memory.refreshed.get(uid)
        recent = last is not None and 0 <= (now - last).total_seconds() < self.refresh_seconds
        if decision.replicas == obs.replicas and (
            patch == old or (recent and status.material(patch) == status.material(old))
        ):
            # Nothing to write (the steady state), or only live figures refreshed less than a minute
            # ago: the cached copy is enough. No read, no lock, no write.
            self.memory.states[uid] = decision.state
            result = Evaluated(svc.namespace, svc.name, decision, obs.replicas)
        else:
            svc, result = await self._write(svc, obs, candidate.pods, now)
        auto = svc.spec.autoscaling
        telemetry.record(
            svc.namespace, svc.name, result.decision, result.previous, auto.min_replicas, auto.max_replicas
        )
        return result

    async def _write(
        self,
        svc: api.QwenService,
        obs: scaling.Observation,
        pods: Sequence[Mapping[str, Any]],
        now: datetime.datetime,
    ) -> tuple[api.QwenService, Evaluated]:
        key = (svc.namespace, svc.name)
        async with self.locks.setdefault(key, asyncio.Lock()):
            fresh = await self.cluster.get(QWENSERVICES, *key)
            if fresh is None or fresh["metadata"].get("uid") != svc.metadata.uid:
                raise Changed(f"QwenService {key[0]}/{key[1]} is gone")
            svc = validation.parse(fresh, self.policy)
            if not svc.spec.autoscaling.enabled:
                raise Changed(f"QwenService {key[0]}/{key[1]} turned autoscaling off")
            deployment = await self.cluster.get(DEPLOYMENTS, *key)
            if deployment is None:
                raise Changed(f"Deployment {key[0]}/{key[1]} is gone")
            replicas = int(deployment.get("spec", {}).get("replicas", 1))
            acting = svc.spec.autoscaling.owns_replicas
            if not acting:  # advice: decided from the last advice, the Deployment is not touched
                obs = advised(svc, replace(obs, replicas=replicas))
            elif replicas != obs.replicas:  # changed since the watch reported it: decide from the fresh count
                obs = replace(obs, replicas=replicas)
            decision, new = self.decide(svc, obs, now)
            self.memory.states[svc.metadata.uid or ""] = decision.state
            result = Evaluated(svc.namespace, svc.name, decision, obs.replicas)
            out = result.outcome
            if not acting and decision.replicas != obs.replicas:
                message = f"would scale {obs.replicas} -> {decision.replicas}: {decision.message}"
                out.events.append(Event("Normal", "Advised", message))
                log.info("%s/%s Advised %s", svc.namespace, svc.name, message)
            if acting and decision.replicas < obs.replicas:
                await self._mark_deletion_costs(svc.namespace, pods, scaling.deletion_costs(obs), out)
            if acting and decision.replicas != obs.replicas:
                patch = {"spec": {"replicas": decision.replicas}}
                await self.cluster.merge_patch(DEPLOYMENTS, svc.namespace, svc.name, patch)
                out.writes += 1
                verb = "ScaledUp" if decision.replicas > obs.replicas else "ScaledDown"
                message = f"{obs.replicas} -> {decision.replicas}: {decision.message}"
                out.events.append(Event("Normal", verb, message))
                log.info("%s/%s %s %s", svc.namespace, svc.name, verb, message)
            out.events += _metrics_events(svc.status, new, decision.message)
            await write_status(self.cluster, fresh, new, out)
            self.memory.refreshed[svc.metadata.uid or ""] = now
            await create_events(self.cluster, fresh, out.events, now)
        return svc, result

    async def _mark_deletion_costs(
        self, namespace: str, pods: Sequence[Mapping[str, Any]], costs: Mapping[str, int], out: Outcome
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
            try:
                await self.cluster.merge_patch(PODS, namespace, name, patch)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                continue  # the pod went since the watch reported it: nothing to protect or remove
            out.writes += 1


def advised(svc: api.QwenService, obs: scaling.Observation) -> scaling.Observation:
    """In mode Advisory the scaler decides from its own last advice, as if it had been followed (the
    Deployment's count at the first evaluation); in mode Active, from the Deployment's count."""
    if svc.spec.autoscaling.owns_replicas:
        return obs
    last = (svc.status.autoscaling or api.AutoscalingStatus()).advised_replicas
    return obs if last is None else replace(obs, replicas=last)


def _condition(st: api.QwenServiceStatus, type_: str) -> tuple[str, str] | None:
    return next(((c.status, c.reason) for c in st.conditions if c.type == type_), None)


def _metrics_events(old: api.QwenServiceStatus, new: api.QwenServiceStatus, message: str) -> list[Event]:
    """A Warning when ready pods stop reporting, or have not reported within staleAfterSeconds of
    turning Ready (no ready pods yet, or new pods awaiting Prometheus' first scrape of them, is not worth
    one), and a Normal Event when they report again after a Warning."""
    before = _condition(old, status.METRICS_AVAILABLE)
    after = _condition(new, status.METRICS_AVAILABLE)
    lost, found = ("False", "MetricsUnavailable"), ("True", "MetricsAvailable")
    if after == lost != before:
        return [Event("Warning", "MetricsUnavailable", message)]
    if after == found and before == lost:
        return [Event("Normal", "MetricsAvailable", message)]
    return []
