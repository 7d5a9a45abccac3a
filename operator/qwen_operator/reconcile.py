"""The one idempotent reconcile: make a QwenService's Deployment and Service match its spec.

Level-based: it reads what exists, compares it with what the spec renders, writes only what differs,
and computes the status. It deletes only what this QwenService made and no longer asks for (its
NetworkPolicy or PodDisruptionBudget), and never touches an object it does not own. kopf-free (the
handlers post the returned events), so it runs in unit tests against a fake
:class:`~qwen_operator.kube.ClusterAPI`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from qwen_operator import api, labels, render, status, validation
from qwen_operator.kube import (
    DEPLOYMENTS,
    JOBS,
    NETWORKPOLICIES,
    PODDISRUPTIONBUDGETS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
    ClusterAPI,
    Resource,
    is_forbidden,
    refusal,
    summary,
)
from qwen_operator.objects import owned_by, patch_ops
from qwen_operator.outcome import Event, Outcome
from qwen_operator.writes import write_status


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
    ns, name = svc.namespace, desired["metadata"]["name"]
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
    changed = sorted({op["path"].split("/")[2 if op["path"].startswith("/spec/") else 1] for op in ops})
    outcome.events.append(Event("Normal", "Updated", f"Updated {kind} {name}: {', '.join(changed)}"))
    return patched


def _lenient_status(body: Mapping[str, Any]) -> api.QwenServiceStatus:
    try:
        return api.QwenServiceStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return api.QwenServiceStatus()


async def _remove_owned(
    cluster: ClusterAPI,
    res: Resource,
    kind: str,
    svc: api.QwenService,
    outcome: Outcome,
    name: str | None = None,
) -> None:
    """Delete an object this QwenService created and no longer asks for; anything else stays."""
    name = name or svc.name
    actual = await cluster.get(res, svc.namespace, name)
    if actual is None or not owned_by(actual, svc):
        return
    await cluster.delete(res, svc.namespace, name, actual["metadata"]["uid"])
    outcome.writes += 1
    outcome.events.append(Event("Normal", "Deleted", f"Deleted {kind} {name} (no longer in the spec)"))


async def _optional(
    cluster: ClusterAPI,
    res: Resource,
    kind: str,
    desired: dict[str, Any] | None,
    svc: api.QwenService,
    outcome: Outcome,
    problems: list[status.Problem],
) -> None:
    """Create or update an object the spec may ask for (a NetworkPolicy, a PodDisruptionBudget), or
    remove the one this service made when it no longer does. An operator whose RBAC predates the kind
    says so in the status instead of failing the rest."""
    try:
        if desired is not None:
            await _apply(cluster, res, desired, svc, outcome, problems)
        else:
            await _remove_owned(cluster, res, kind, svc, outcome)
    except Exception as exc:
        if not is_forbidden(exc):
            raise
        if desired is not None:  # with none asked for, not being able to look is no problem
            problems.append(
                status.Problem(
                    f"{kind}Forbidden",
                    f"the operator may not manage {kind}s, so this service has none: grant it {res.plural} "
                    "get/create/patch/delete (the Helm chart's RBAC does)",
                )
            )


async def _chat_ui(
    cluster: ClusterAPI,
    svc: api.QwenService,
    outcome: Outcome,
    problems: list[status.Problem],
    defaults: render.Defaults,
) -> None:
    """The chat page's Deployment and Service while ``chatUI.enabled``; the ones this service made are
    deleted when it is turned off."""
    chat = render.render_chat_ui(svc, defaults)
    if chat is not None:
        await _apply(cluster, DEPLOYMENTS, chat[0], svc, outcome, problems)
        await _apply(cluster, SERVICES, chat[1], svc, outcome, problems)
        return
    if svc.status.chat_ui is None:  # never deployed (or already removed): nothing to look for
        return
    name = labels.chat_ui_name(svc.name)
    await _remove_owned(cluster, SERVICES, "Service", svc, outcome, name)
    await _remove_owned(cluster, DEPLOYMENTS, "Deployment", svc, outcome, name)


# The router's objects by kind, in the order they are made (and removed in reverse).
ROUTER_KINDS: dict[str, Resource] = {
    "ServiceAccount": SERVICEACCOUNTS,
    "Role": ROLES,
    "RoleBinding": ROLEBINDINGS,
    "Deployment": DEPLOYMENTS,
    "PodDisruptionBudget": PODDISRUPTIONBUDGETS,
}


async def _router(
    cluster: ClusterAPI,
    svc: api.QwenService,
    outcome: Outcome,
    problems: list[status.Problem],
    defaults: render.Defaults,
) -> bool | None:
    """With ``routing.mode: Builtin``, the router's objects, the engines' Service and the router's
    NetworkPolicy; returns whether the Service ``NAME`` should select the router's pods now. A service
    that already serves switches only once a router pod is Ready (its clients never meet a Service with
    no endpoints); a new one, at once. Without the router, None (see :func:`_unroute`)."""
    objects = render.render_router(svc, defaults)
    if objects is None:
        return None
    deployment: dict[str, Any] | None = None
    try:
        for obj in objects:
            applied = await _apply(cluster, ROUTER_KINDS[obj["kind"]], obj, svc, outcome, problems)
            if obj["kind"] == "Deployment":
                deployment = applied
    except Exception as exc:
        if not is_forbidden(exc):
            raise
        problems.append(
            status.Problem(
                "RouterForbidden",
                f"the operator may not manage the router's objects ({summary(exc)}), so clients reach "
                "the vLLM pods directly: grant it serviceaccounts, roles and rolebindings "
                "get/create/patch/delete and endpointslices get/list/watch (the Helm chart's RBAC does)",
            )
        )
        return False
    for res, kind, wanted in (
        (SERVICES, "Service", render.render_engines_service(svc)),
        (NETWORKPOLICIES, "NetworkPolicy", render.render_router_network_policy(svc)),
    ):
        await _optional(cluster, res, kind, wanted, svc, outcome, problems)
    st = (deployment or {}).get("status") or {}
    if st.get("readyReplicas"):
        return True
    current = await cluster.get(SERVICES, svc.namespace, svc.name)
    switched = current is None or (current.get("spec") or {}).get("selector") == labels.router_selector(
        svc.name
    )
    stuck = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in st.get("conditions") or []
    )
    if stuck:
        where = "nothing serves" if switched else "clients still reach the vLLM pods directly"
        problems.append(
            status.Problem(
                "RouterUnavailable",
                f"no pod of the router {labels.router_name(svc.name)} became Ready in "
                f"{render.ROUTER_PROGRESS_DEADLINE_SECONDS} s ({where}); check its image and "
                f"kubectl describe pods -l {labels.ROUTER_OF_LABEL}={svc.name}",
            )
        )
    return switched


async def _unroute(cluster: ClusterAPI, svc: api.QwenService, outcome: Outcome) -> None:
    """Without the router: remove what this service made for it (the Service already selects the vLLM
    pods again). Looked for only while the status says there is one (``status.routing``)."""
    if svc.status.routing is None:
        return
    name = labels.router_name(svc.name)
    await _remove_owned(cluster, NETWORKPOLICIES, "NetworkPolicy", svc, outcome, name)
    await _remove_owned(cluster, SERVICES, "Service", svc, outcome, labels.engines_name(svc.name))
    for kind, res in reversed(ROUTER_KINDS.items()):
        await _remove_owned(cluster, res, kind, svc, outcome, name)


async def _download_job(
    cluster: ClusterAPI, svc: api.QwenService, outcome: Outcome, problems: list[status.Problem]
) -> dict[str, Any] | None:
    """The model download Job (``cache.prefill``): created when asked for; replaced when it fills another
    model or revision (a Job cannot be changed); removed when no longer asked for. Only ever one this
    QwenService owns. Returns the Job, or None."""
    desired = render.render_download_job(svc)
    ns, name = svc.namespace, labels.download_job_name(svc.name)
    had = any(c.type == status.MODEL_CACHED for c in svc.status.conditions)
    if desired is None and not had:  # never asked for (or already removed): nothing to look for
        return None
    try:
        actual = await cluster.get(JOBS, ns, name)
        if actual is not None and not owned_by(actual, svc):
            if desired is not None:
                problems.append(
                    status.Problem(
                        "ResourceConflict",
                        f"Job {ns}/{name} exists and is not owned by this QwenService; it is left untouched "
                        "and the model cache is not filled. Delete or rename it.",
                    )
                )
            return None
        if actual is not None:
            key = (actual.get("metadata", {}).get("annotations") or {}).get(labels.CACHE_KEY_ANNOTATION)
            wanted = (
                None if desired is None else desired["metadata"]["annotations"][labels.CACHE_KEY_ANNOTATION]
            )
            if key != wanted:
                await cluster.delete(JOBS, ns, name, actual["metadata"]["uid"])
                outcome.writes += 1
                why = "another model or revision" if desired is not None else "no longer in the spec"
                outcome.events.append(Event("Normal", "Deleted", f"Deleted Job {name} ({why})"))
                actual = None
        if actual is None and desired is not None:
            actual = await cluster.create(JOBS, desired)
            outcome.writes += 1
            outcome.events.append(
                Event(
                    "Normal",
                    "Created",
                    f"Created Job {name}: filling the model cache with {svc.spec.model.name}",
                )
            )
        return actual
    except Exception as exc:
        if not is_forbidden(exc):
            raise
        if desired is not None:
            problems.append(
                status.Problem(
                    "JobForbidden",
                    "the operator may not manage Jobs, so the model cache is not filled and the pods wait: "
                    "grant it jobs get/create/delete (the Helm chart's RBAC does)",
                )
            )
        return None


def _model_cached(
    svc: api.QwenService, job: Mapping[str, Any] | None, problems: list[status.Problem]
) -> tuple[bool, str, str] | None:
    """The ModelCached condition (status, reason, message) while ``cache.prefill`` is on, else None. A
    failed download is also a problem (Degraded): the serving pods wait for it."""
    hub = svc.spec.model.source.hub
    if hub is None or not hub.cache.prefill:
        return None
    name, claim = labels.download_job_name(svc.name), hub.cache.claim_name
    model = svc.spec.model.name + (f"@{svc.spec.model.revision}" if svc.spec.model.revision else "")
    if job is None:
        return False, "Downloading", f"waiting for the download Job {name}; the serving pods wait for it"
    st = job.get("status") or {}
    if st.get("succeeded"):
        return True, "Cached", f"{model} is in PVC {claim} (Job {name}): replicas start from it, offline"
    failed = next(
        (c for c in st.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"),
        None,
    )
    if failed is not None:
        message = (
            f"the download Job {name} failed ({failed.get('reason', 'Failed')}: "
            f"{failed.get('message', '')}); the serving pods wait for it. See kubectl logs job/{name}; "
            f"check the model name, the Hub token and the free space on PVC {claim}, then delete the Job "
            "to retry"
        )
        problems.append(status.Problem("ModelDownloadFailed", message))
        return False, "DownloadFailed", message
    return (
        False,
        "Downloading",
        f"Job {name} is downloading {model} into PVC {claim} ({st.get('active', 0)} active, "
        f"{st.get('failed', 0)} failed attempts); the serving pods wait for it",
    )


async def _invalid(
    cluster: ClusterAPI, body: Mapping[str, Any], messages: list[str], now: str, outcome: Outcome
) -> Outcome:
    generation = body.get("metadata", {}).get("generation")
    new = status.invalid_status(_lenient_status(body), generation, messages, now)
    await write_status(cluster, body, new, outcome)
    outcome.events.append(Event("Warning", "InvalidSpec", "; ".join(messages)))
    return outcome


async def _report_api_error(
    cluster: ClusterAPI,
    body: Mapping[str, Any],
    svc: api.QwenService,
    what: str,
    exc: BaseException,
    now: str,
    outcome: Outcome,
) -> None:
    """Degraded with reason ApiError while a write keeps failing; the next good reconcile clears it.
    Best effort: when the API server cannot take the status either, the retry reports it."""
    problem = status.Problem(
        "ApiError", f"{what} failed: {summary(exc)}; retrying (what already runs is unchanged)"
    )
    try:
        deployment = await cluster.get(DEPLOYMENTS, svc.namespace, svc.name)
        if deployment is not None and not owned_by(deployment, svc):
            deployment = None
        await write_status(cluster, body, status.compute_status(svc, deployment, now, [problem]), outcome)
    except Exception:
        return


async def reconcile(
    cluster: ClusterAPI,
    body: Mapping[str, Any],
    now: str,
    policy: validation.Policy | None = None,
    defaults: render.Defaults = render.DEFAULTS,
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
    # The scaler owns the Deployment's replicas while autoscaling is on (and acts: advisory, spec.replicas).
    skip = ("replicas",) if svc.spec.autoscaling.owns_replicas else ()
    step = "Job"
    try:
        job = await _download_job(cluster, svc, outcome, problems)
        step = "Deployment"
        deployment = await _apply(
            cluster, DEPLOYMENTS, render.render_deployment(svc), svc, outcome, problems, skip
        )
        step = "router"
        to_router = await _router(cluster, svc, outcome, problems, defaults)
        step = "Service"
        await _apply(cluster, SERVICES, render.render_service(svc, bool(to_router)), svc, outcome, problems)
        if to_router is None:
            step = "router"
            await _unroute(cluster, svc, outcome)
        step = "NetworkPolicy"
        await _optional(
            cluster, NETWORKPOLICIES, step, render.render_network_policy(svc), svc, outcome, problems
        )
        step = "PodDisruptionBudget"
        await _optional(
            cluster, PODDISRUPTIONBUDGETS, step, render.render_disruption_budget(svc), svc, outcome, problems
        )
        step = "chat UI"
        await _chat_ui(cluster, svc, outcome, problems, defaults)
    except Exception as exc:
        message = refusal(exc)
        if message is None:  # busy, failing or away: say so, and let the caller retry
            await _report_api_error(cluster, body, svc, f"writing the {step} {svc.name}", exc, now, outcome)
            raise
        return await _invalid(
            cluster,
            body,
            [f"the API server refused the {step} {svc.name}: {message} (what already runs is unchanged)"],
            now,
            outcome,
        )
    cached = _model_cached(svc, job, problems)
    for problem in problems:
        outcome.events.append(Event("Warning", problem.reason, problem.message))
    new = status.compute_status(svc, deployment, now, problems, cached)
    new = new.model_copy(update={"routing": None if to_router is None else svc.spec.routing.mode})
    await write_status(cluster, body, new, outcome)
    return outcome
