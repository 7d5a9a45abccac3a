"""The one idempotent reconcile: make a QwenService's Deployment and Service match its spec.

Level-based: it reads what exists, compares it with what the spec renders, writes only what differs,
and computes the status. It never deletes anything, and never touches an object this QwenService
does not own. kopf-free (the handlers post the returned events), so it runs in unit tests against a
fake :class:`~qwen_operator.kube.Cluster`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from qwen_operator import api, labels, render, status, validation
from qwen_operator.kube import (
    DEPLOYMENTS,
    NETWORKPOLICIES,
    QWENSERVICES,
    SERVICES,
    Resource,
    is_forbidden,
    refusal,
)


class ClusterAPI(Protocol):
    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def json_patch(
        self, res: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]: ...
    async def merge_patch(
        self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]: ...
    async def delete(self, res: Resource, namespace: str, name: str, uid: str) -> None: ...


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    writes: int = 0
    status: dict[str, Any] | None = None


def is_subset(desired: Any, actual: Any) -> bool:
    """Whether ``actual`` already holds ``desired``; the API server's own defaults may be extra.

    Maps compare key by key; lists must have the same length and match item by item.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and is_subset(v, actual[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(desired) == len(actual)
            and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
        )
    return bool(desired == actual)


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def patch_ops(
    desired: Mapping[str, Any], actual: Mapping[str, Any], skip_spec: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """JSON-patch operations that bring ``actual`` to ``desired``, only where they differ.

    Each owned ``spec`` field is replaced whole, so fields removed from the QwenService disappear;
    labels and annotations are set key by key, so other controllers' keys survive.
    """
    ops: list[dict[str, Any]] = []
    meta = actual.get("metadata", {})
    for key in ("labels", "annotations"):
        want: Mapping[str, str] = desired["metadata"].get(key, {})
        have = meta.get(key) or {}
        if not have and want:
            ops.append({"op": "add", "path": _pointer("metadata", key), "value": dict(want)})
            continue
        for k, v in want.items():
            if have.get(k) != v:
                ops.append({"op": "add", "path": _pointer("metadata", key, k), "value": v})
    for key, value in desired["spec"].items():
        if key in skip_spec:
            continue
        if not is_subset(value, actual.get("spec", {}).get(key)):
            ops.append({"op": "add", "path": _pointer("spec", key), "value": value})
    return ops


def owned_by(obj: Mapping[str, Any], svc: api.QwenService) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == svc.metadata.uid and ref.get("kind") == api.KIND for ref in refs)


async def _apply(
    cluster: ClusterAPI,
    res: Resource,
    desired: dict[str, Any],
    svc: api.QwenService,
    outcome: Outcome,
    problems: list[status.Problem],
    skip_spec: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    kind = desired["kind"]
    ns, name = svc.namespace, svc.name
    actual = await cluster.get(res, ns, name)
    if actual is None:
        created = await cluster.create(res, desired)
        outcome.writes += 1
        outcome.events.append(Event("Normal", "Created", f"Created {kind} {name}"))
        return created
    if not owned_by(actual, svc):
        problems.append(
            status.Problem(
                "ResourceConflict",
                f"{kind} {ns}/{name} exists and is not owned by this QwenService; it is left untouched. "
                f"Delete or rename it, or rename the QwenService.",
            )
        )
        return None
    ops = patch_ops(desired, actual, skip_spec)
    if not ops:
        return actual
    patched = await cluster.json_patch(res, ns, name, ops)
    outcome.writes += 1
    changed = sorted(
        {op["path"].split("/")[2] if op["path"].startswith("/spec") else "metadata" for op in ops}
    )
    outcome.events.append(Event("Normal", "Updated", f"Updated {kind} {name}: {', '.join(changed)}"))
    return patched


async def write_status(
    cluster: ClusterAPI, svc_body: Mapping[str, Any], new: api.QwenServiceStatus, outcome: Outcome
) -> None:
    body = status.status_patch(new)
    old = svc_body.get("status") or {}
    outcome.status = body
    if body == old:
        return
    # Only the top-level fields that differ: the scaler and the reconcile both write status, and neither
    # may put back an older copy of a field the other one owns. null deletes in a merge patch.
    patch = {
        **{key: None for key in old if key not in body},
        **{k: v for k, v in body.items() if old.get(k) != v},
    }
    meta = svc_body["metadata"]
    await cluster.merge_patch(QWENSERVICES, meta["namespace"], meta["name"], {"status": patch}, sub="status")
    outcome.writes += 1


def _lenient_status(body: Mapping[str, Any]) -> api.QwenServiceStatus:
    try:
        return api.QwenServiceStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return api.QwenServiceStatus()


async def _remove_owned(
    cluster: ClusterAPI, res: Resource, kind: str, svc: api.QwenService, outcome: Outcome
) -> None:
    """Delete an object this QwenService created and no longer asks for; anything else stays."""
    actual = await cluster.get(res, svc.namespace, svc.name)
    if actual is None or not owned_by(actual, svc):
        return
    await cluster.delete(res, svc.namespace, svc.name, actual["metadata"]["uid"])
    outcome.writes += 1
    outcome.events.append(Event("Normal", "Deleted", f"Deleted {kind} {svc.name} (no longer in the spec)"))


async def _network_policy(
    cluster: ClusterAPI, svc: api.QwenService, outcome: Outcome, problems: list[status.Problem]
) -> None:
    """Create or update the NetworkPolicy the spec asks for, or remove the one this service made. An
    operator whose RBAC predates NetworkPolicies says so in the status instead of failing the rest."""
    policy = render.render_network_policy(svc)
    try:
        if policy is not None:
            await _apply(cluster, NETWORKPOLICIES, policy, svc, outcome, problems)
        else:
            await _remove_owned(cluster, NETWORKPOLICIES, "NetworkPolicy", svc, outcome)
    except Exception as exc:
        if not is_forbidden(exc):
            raise
        if policy is not None:  # with none asked for, not being able to look is no problem
            problems.append(
                status.Problem(
                    "NetworkPolicyForbidden",
                    "the operator may not manage NetworkPolicies, so none protects this service: grant it "
                    "networkpolicies get/create/patch/delete (the Helm chart's RBAC does)",
                )
            )


async def _invalid(
    cluster: ClusterAPI, body: Mapping[str, Any], messages: list[str], now: str, outcome: Outcome
) -> Outcome:
    generation = body.get("metadata", {}).get("generation")
    new = status.invalid_status(_lenient_status(body), generation, messages, now)
    await write_status(cluster, body, new, outcome)
    outcome.events.append(Event("Warning", "InvalidSpec", "; ".join(messages)))
    return outcome


async def reconcile(
    cluster: ClusterAPI, body: Mapping[str, Any], now: str, policy: validation.Policy | None = None
) -> Outcome:
    """Bring one QwenService's workload in line with its spec; return what happened.

    A spec the API server refuses (HTTP 400/422 on create or patch) is reported as ``InvalidSpec`` with
    the server's message instead of raised: a retry cannot fix it, and what already runs keeps running.
    """
    outcome = Outcome()
    try:
        svc = validation.parse(body, policy or validation.Policy())
    except validation.InvalidSpec as exc:
        return await _invalid(cluster, body, exc.messages, now, outcome)

    problems: list[status.Problem] = []
    # The scaler owns the Deployment's replicas while autoscaling is on.
    skip = ("replicas",) if svc.spec.autoscaling.enabled else ()
    step = "Deployment"
    try:
        deployment = await _apply(
            cluster, DEPLOYMENTS, render.render_deployment(svc), svc, outcome, problems, skip
        )
        step = "Service"
        await _apply(cluster, SERVICES, render.render_service(svc), svc, outcome, problems)
        step = "NetworkPolicy"
        await _network_policy(cluster, svc, outcome, problems)
    except Exception as exc:
        message = refusal(exc)
        if message is None:
            raise
        return await _invalid(
            cluster,
            body,
            [f"the API server refused the {step} {svc.name}: {message} (what already runs is unchanged)"],
            now,
            outcome,
        )
    for problem in problems:
        outcome.events.append(Event("Warning", problem.reason, problem.message))
    new = status.compute_status(svc, deployment, now, problems)
    await write_status(cluster, body, new, outcome)
    return outcome


def owner_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the QwenService controlling a managed object, if any."""
    meta = obj.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("apiVersion", "").startswith(api.GROUP + "/"):
            return meta.get("namespace", "default"), ref["name"]
    name = (meta.get("labels") or {}).get(labels.SERVICE_LABEL)
    return (meta.get("namespace", "default"), name) if name else None
