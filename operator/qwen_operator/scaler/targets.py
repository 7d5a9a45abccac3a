"""Join the services due for an evaluation with their Deployments and ready pods (pure)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwen_operator import api, labels, startup
from qwen_operator.metrics import PodRef, Target
from qwen_operator.objects import is_ready, key, owned_by


@dataclass(frozen=True)
class Candidate:
    """A service to evaluate: its model, the body it was read from, what to measure, its ready pods."""

    svc: api.QwenService
    body: Mapping[str, Any]
    target: Target
    pods: tuple[Mapping[str, Any], ...]


def ready_pods_by_service(
    pods: Sequence[Mapping[str, Any]], label: str = labels.SERVICE_LABEL
) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Ready managed pods by (namespace, service name), from the service label (or another: the
    router's pods carry theirs)."""
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for pod in pods:
        meta = pod["metadata"]
        owner = (meta.get("labels") or {}).get(label)
        if owner and is_ready(pod):
            out[meta["namespace"], owner].append(pod)
    return out


def candidates(
    due: Sequence[tuple[api.QwenService, Mapping[str, Any]]],
    deployments: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> list[Candidate]:
    """Each due service whose Deployment exists and is its own (else the reconcile reports why), with
    the Deployment's replicas and its ready pods in name order."""
    by_key = {key(d): d for d in deployments}
    ready = ready_pods_by_service(pods)
    routers = ready_pods_by_service(pods, labels.ROUTER_OF_LABEL)
    unscheduled: Counter[tuple[str, str]] = Counter(
        (p["metadata"]["namespace"], owner)
        for p in pods
        if startup.unschedulable(p)
        and (owner := (p["metadata"].get("labels") or {}).get(labels.SERVICE_LABEL))
    )
    out = []
    for svc, body in due:
        dep = by_key.get((svc.namespace, svc.name))
        if dep is None or not owned_by(dep, svc):
            continue
        mine = tuple(sorted(ready[svc.namespace, svc.name], key=lambda p: str(p["metadata"]["name"])))
        started = [startup.phases(p) for p in mine]
        target = Target(
            svc.namespace,
            svc.name,
            int(dep.get("spec", {}).get("replicas", 1)),
            tuple(PodRef(p["metadata"]["name"], (p.get("status") or {}).get("podIP")) for p in mine),
            tuple(ph["total"] for ph in started if "total" in ph),
            None
            if svc.spec.routing.router is None
            else tuple(
                PodRef(p["metadata"]["name"], (p.get("status") or {}).get("podIP"))
                for p in sorted(routers[svc.namespace, svc.name], key=lambda p: str(p["metadata"]["name"]))
            ),
            tuple(ph["node"] for ph in started if "node" in ph),
            unscheduled[svc.namespace, svc.name],
        )
        out.append(Candidate(svc, body, target, mine))
    return out
