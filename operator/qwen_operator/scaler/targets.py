"""Join the services due for an evaluation with their Deployments and ready pods (pure)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwen_operator import api, labels
from qwen_operator.metrics import PodRef, Target
from qwen_operator.objects import is_ready, key, owned_by, parse_time


@dataclass(frozen=True)
class Candidate:
    """A service to evaluate: its model, the body it was read from, what to measure, its ready pods."""

    svc: api.QwenService
    body: Mapping[str, Any]
    target: Target
    pods: tuple[Mapping[str, Any], ...]


def start_seconds(pod: Mapping[str, Any]) -> float | None:
    """Seconds from a pod's creation to its Ready condition (its cold start), when both are known."""
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    ready = next(
        (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )
    became = parse_time((ready or {}).get("lastTransitionTime"))
    if created is None or became is None:
        return None
    seconds = (became - created).total_seconds()
    return seconds if seconds > 0 else None


STARTUP_PHASES = ("node", "init", "image", "engine", "total")


def startup_phases(pod: Mapping[str, Any], container: str = "vllm") -> dict[str, float]:
    """Where a ready pod's cold start went, in seconds, from what the API records: ``node`` (created to
    scheduled: waiting for a node, a node autoscaler's provisioning included), ``init`` (scheduled to
    initialized: the init containers, the model cache among them), ``image`` (to the engine container's
    start: pulling the image, creating the container), ``engine`` (to Ready: loading the weights,
    compiling, the server up, the readiness probe), and ``total``. A phase whose ends are not both
    recorded is left out; none without a Ready condition."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Ready" not in conditions:
        return {}
    started = next(
        (
            ((s.get("state") or {}).get("running") or {}).get("startedAt")
            for s in status.get("containerStatuses") or []
            if s.get("name") == container
        ),
        None,
    )
    marks = [
        ("created", parse_time(meta.get("creationTimestamp"))),
        ("node", parse_time((conditions.get("PodScheduled") or {}).get("lastTransitionTime"))),
        ("init", parse_time((conditions.get("Initialized") or {}).get("lastTransitionTime"))),
        ("image", parse_time(started)),
        ("engine", parse_time(conditions["Ready"].get("lastTransitionTime"))),
    ]
    out: dict[str, float] = {}
    for (_, begun), (phase, ended) in itertools.pairwise(marks):
        if begun is not None and ended is not None and ended >= begun:
            out[phase] = (ended - begun).total_seconds()
    created, ready = marks[0][1], marks[-1][1]
    if created is not None and ready is not None and ready > created:
        out["total"] = (ready - created).total_seconds()
    return out


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
    out = []
    for svc, body in due:
        dep = by_key.get((svc.namespace, svc.name))
        if dep is None or not owned_by(dep, svc):
            continue
        mine = tuple(sorted(ready[svc.namespace, svc.name], key=lambda p: str(p["metadata"]["name"])))
        target = Target(
            svc.namespace,
            svc.name,
            int(dep.get("spec", {}).get("replicas", 1)),
            tuple(PodRef(p["metadata"]["name"], (p.get("status") or {}).get("podIP")) for p in mine),
            tuple(s for s in (start_seconds(p) for p in mine) if s is not None),
            None
            if svc.spec.routing.router is None
            else tuple(
                PodRef(p["metadata"]["name"], (p.get("status") or {}).get("podIP"))
                for p in sorted(routers[svc.namespace, svc.name], key=lambda p: str(p["metadata"]["name"]))
            ),
        )
        out.append(Candidate(svc, body, target, mine))
    return out
