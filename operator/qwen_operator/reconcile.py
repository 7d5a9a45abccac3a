"""The one idempotent reconcile: make a QwenService's Deployment and Service match its spec.

Level-based: it reads what exists, compares it with what the spec renders, writes only what differs,
and computes the status. It deletes only what this QwenService made and no longer asks for (its
NetworkPolicy or PodDisruptionBudget), and never touches an object it does not own. kopf-free (the
handlers post the returned events), so it runs in unit tests against a fake
:class:`~qwen_operator.kube.ClusterAPI`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from qwen_operator import api, labels, render, startup, status, telemetry, validation
from qwen_operator.kube import (
    CONFIGMAPS,
    DAEMONSETS,
    DEPLOYMENTS,
    HTTPROUTES,
    INFERENCEPOOLS,
    JOBS,
    NETWORKPOLICIES,
    PODDISRUPTIONBUDGETS,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
    ClusterAPI,
    Resource,
    is_forbidden,
    is_not_found,
    refusal,
    summary,
)
from qwen_operator.objects import owned_by, parse_time, patch_ops
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
    name: str | None = None,
) -> None:
    """Create or update an object the spec may ask for (a NetworkPolicy, a PodDisruptionBudget), or
    remove the one this service made when it no longer does. An operator whose RBAC predates the kind
    says so in the status instead of failing the rest."""
    try:
        if desired is not None:
            await _apply(cluster, res, desired, svc, outcome, problems)
        else:
            await _remove_owned(cluster, res, kind, svc, outcome, name)
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


PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


async def _image_prepull(
    cluster: ClusterAPI,
    svc: api.QwenService,
    outcome: Outcome,
    problems: list[status.Problem],
    pods: Sequence[Mapping[str, Any]],
    defaults: render.Defaults,
) -> tuple[bool, str, str] | None:
    """The image pre-pull DaemonSet while ``engine.prePullImage``, and its ImagePrePulled condition
    (status, reason, message); the one this service made goes when it is turned off (None). A pull that
    fails is reported here and never holds serving back: the serving pods pull for themselves."""
    desired = render.render_image_prepull(svc, defaults)
    name = labels.prepull_name(svc.name)
    if desired is None:
        if any(c.type == status.IMAGE_PREPULLED for c in svc.status.conditions):
            await _optional(cluster, DAEMONSETS, "DaemonSet", None, svc, outcome, problems, name)
        return None
    try:
        live = await _apply(cluster, DAEMONSETS, desired, svc, outcome, problems)
    except Exception as exc:
        if not is_forbidden(exc):
            raise
        return (
            False,
            "Forbidden",
            (
                "the operator may not manage DaemonSets: grant it daemonsets get/list/watch/create/patch/"
                "delete (the Helm chart's RBAC does); the pods pull the image themselves"
            ),
        )
    if live is None:  # someone else's object by that name: a ResourceConflict problem says so
        return False, "ResourceConflict", f"DaemonSet {name} is not this service's"
    image = svc.spec.engine.image
    failing = [
        (p["metadata"].get("name", ""), waiting)
        for p in pods
        if (p.get("metadata") or {}).get("namespace") == svc.namespace
        and ((p.get("metadata") or {}).get("labels") or {}).get(labels.PREPULL_OF_LABEL) == svc.name
        for c in (p.get("status") or {}).get("initContainerStatuses") or []
        if c.get("name") == "pull"
        and (waiting := (c.get("state") or {}).get("waiting") or {}).get("reason") in PULL_FAILURES
    ]
    st = live.get("status") or {}
    nodes, have = int(st.get("desiredNumberScheduled", 0) or 0), int(st.get("numberReady", 0) or 0)
    if failing:
        pod, waiting = failing[0]
        return (
            False,
            "PullFailed",
            (
                f"{len(failing)} node(s) cannot pull {image}: {waiting.get('reason')}: "
                f"{waiting.get('message', '')} (pod {pod}); the serving pods pull it themselves, and fail "
                "alike on those nodes: check the image name and spec.engine.imagePullSecrets"
            ),
        )
    observed = st.get("observedGeneration")  # absent until the DaemonSet controller has seen it
    current = observed is not None and int(observed) >= int(live["metadata"].get("generation", 0) or 0)
    if current and nodes == 0:
        return (
            False,
            "NoNodes",
            (
                "no node matches the pods' nodeSelector, tolerations and node affinity yet; the image is "
                "pulled on each that joins"
            ),
        )
    if current and have >= nodes:
        return True, "Pulled", f"{image} is on the {nodes} node(s) the pods may land on"
    return False, "Pulling", f"{have} of {nodes} node(s) have {image}"


# What routing makes, by kind (removed in the reverse order of the renderer's).
ROUTING_KINDS: dict[str, Resource] = {
    "ServiceAccount": SERVICEACCOUNTS,
    "Role": ROLES,
    "RoleBinding": ROLEBINDINGS,
    "ConfigMap": CONFIGMAPS,
    "Deployment": DEPLOYMENTS,
    "PodDisruptionBudget": PODDISRUPTIONBUDGETS,
    "Service": SERVICES,
    "NetworkPolicy": NETWORKPOLICIES,
    "InferencePool": INFERENCEPOOLS,
    "HTTPRoute": HTTPROUTES,
}
# Kinds a cluster may not have: their CRDs come with the Gateway API (Inference Extension).
OPTIONAL_APIS = {
    "InferencePool": (
        "the Gateway API Inference Extension's CRDs (inferencepools.inference.networking.k8s.io)"
    ),
    "HTTPRoute": "the Gateway API's CRDs (httproutes.gateway.networking.k8s.io)",
}


async def _routing(
    cluster: ClusterAPI,
    svc: api.QwenService,
    outcome: Outcome,
    problems: list[status.Problem],
    defaults: render.Defaults,
) -> bool | None:
    """What ``spec.routing`` asks for: the router's objects (``Builtin``) or the InferencePool's
    (``InferencePool``). Returns whether the Service ``NAME`` should select the router's pods now (a
    service that already serves moves to the router only once a router pod is Ready, so that its
    clients never meet a Service without endpoints; a new one, at once), False for an InferencePool
    (the Service stays), None without either (see :func:`_unroute`)."""
    mode = svc.spec.routing.mode
    objects = render.render_router(svc, defaults) or render.render_inference_pool(svc, defaults)
    if objects is None:
        return None
    deployment: dict[str, Any] | None = None
    engines = render.render_engines_service(svc)
    try:
        for obj in [*objects, *([engines] if engines is not None else [])]:
            kind = obj["kind"]
            try:
                applied = await _apply(cluster, ROUTING_KINDS[kind], obj, svc, outcome, problems)
            except Exception as exc:
                if kind not in OPTIONAL_APIS or not is_not_found(exc):
                    raise
                problems.append(
                    status.Problem(
                        f"{kind}Unavailable",
                        f"this cluster has no {kind} API: install {OPTIONAL_APIS[kind]}, or choose "
                        "another spec.routing.mode; clients reach the vLLM pods through the Service",
                    )
                )
                continue
            if kind == "Deployment":
                deployment = applied
    except Exception as exc:
        if not is_forbidden(exc):
            raise
        problems.append(
            status.Problem(
                "RoutingForbidden",
                f"the operator may not manage the objects of routing mode {mode} ({summary(exc)}), so "
                "clients reach the vLLM pods directly: grant what the Helm chart's RBAC grants "
                "(serviceaccounts, roles and rolebindings get/create/patch/delete, and the rest)",
            )
        )
        return False
    if mode != "Builtin":
        if not any(o["kind"] == "HTTPRoute" for o in objects):  # a gatewayRef removed: its route goes
            await _remove_unless_absent(cluster, "HTTPRoute", svc, outcome, svc.name)
        return False
    policy = render.render_router_network_policy(svc)  # made, changed or removed with spec.networkPolicy
    await _optional(
        cluster,
        NETWORKPOLICIES,
        "NetworkPolicy",
        policy,
        svc,
        outcome,
        problems,
        labels.router_name(svc.name),
    )
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


def _made_for(mode: str, name: str) -> list[tuple[str, str]]:
    """(kind, name) of what routing ``mode`` makes for the QwenService ``name``, in removal order."""
    if mode == "Builtin":
        router = labels.router_name(name)
        return [
            ("NetworkPolicy", router),
            ("Service", labels.engines_name(name)),
            *(
                (kind, router)
                for kind in ("PodDisruptionBudget", "Deployment", "RoleBinding", "Role", "ServiceAccount")
            ),
        ]
    if mode == "InferencePool":
        epp = labels.epp_name(name)
        return [
            ("HTTPRoute", name),
            ("InferencePool", name),
            *(
                (kind, epp)
                for kind in ("Service", "Deployment", "ConfigMap", "RoleBinding", "Role", "ServiceAccount")
            ),
        ]
    return []


async def _unroute(cluster: ClusterAPI, svc: api.QwenService, outcome: Outcome) -> None:
    """When the routing mode changed: remove what this service made for the previous one (the Service
    already selects the vLLM pods again). Looked for only while the status names a mode."""
    before, now = svc.status.routing, svc.spec.routing.mode
    if before is None or before == now:
        return
    for kind, name in _made_for(before, svc.name):
        await _remove_unless_absent(cluster, kind, svc, outcome, name)


async def _remove_unless_absent(
    cluster: ClusterAPI, kind: str, svc: api.QwenService, outcome: Outcome, name: str
) -> None:
    """Remove what this service made of ``kind``, where the cluster has that API and the operator may
    look (what it could not see, it could not have made)."""
    try:
        await _remove_owned(cluster, ROUTING_KINDS[kind], kind, svc, outcome, name)
    except Exception as exc:
        if not ((kind in OPTIONAL_APIS and is_not_found(exc)) or is_forbidden(exc)):
            raise


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
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> Outcome:
    """Bring one QwenService's workload in line with its spec; return what happened. ``pods``: the
    managed pods the caller's watch has (listed when None); those of this service that became ready
    since the last look go into ``status.startup``, which sizes the startup probe.

    A spec the API server refuses (HTTP 400/422 on create or patch) is reported as ``InvalidSpec`` with
    the server's message instead of raised: a retry cannot fix it, and what already runs keeps running.
    """
    outcome = Outcome()
    try:
        svc = validation.parse(body, policy or validation.Policy())
    except validation.InvalidSpec as exc:
        return await _invalid(cluster, body, exc.messages, now, outcome)

    if pods is None:  # the serving pods, and the pre-pull DaemonSet's (a failed pull shows there)
        pods = await cluster.list(PODS, svc.namespace, labels.selector_string(svc.name))
        if svc.spec.engine.pre_pull_image:
            pods = [*pods, *await cluster.list(PODS, svc.namespace, f"{labels.PREPULL_OF_LABEL}={svc.name}")]
    svc, counted, started_events, problems = _startups(svc, pods, now)
    outcome.events.extend(started_events)
    # The scaler owns the Deployment's replicas while autoscaling is on (and acts: advisory, spec.replicas).
    skip = ("replicas",) if svc.spec.autoscaling.owns_replicas else ()
    step = "Job"
    try:
        job = await _download_job(cluster, svc, outcome, problems)
        step = "Deployment"
        deployment = await _apply(
            cluster, DEPLOYMENTS, render.render_deployment(svc), svc, outcome, problems, skip
        )
        step = "routing"
        to_router = await _routing(cluster, svc, outcome, problems, defaults)
        step = "Service"
        await _apply(cluster, SERVICES, render.render_service(svc, bool(to_router)), svc, outcome, problems)
        step = "routing"
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
        step = "DaemonSet"
        prepulled = await _image_prepull(cluster, svc, outcome, problems, pods, defaults)
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
    new = status.compute_status(svc, deployment, now, problems, cached, prepulled)
    new = new.model_copy(update={"routing": None if to_router is None else svc.spec.routing.mode})
    await write_status(cluster, body, new, outcome)
    for sample in counted:  # once written: a failed write counts them at the next reconcile instead
        for phase in startup.PHASES:
            if (seconds := getattr(sample, phase)) is not None:
                telemetry.POD_STARTUP.labels(svc.namespace, svc.name, phase).observe(seconds)
    return outcome


def _startups(
    svc: api.QwenService, pods: Sequence[Mapping[str, Any]], now: str
) -> tuple[api.QwenService, list[api.StartupSample], list[Event], list[status.Problem]]:
    """``svc`` with what its pods' starts say in its status: the start-ups of those that became ready
    since the last look (and the startup probe's budget they call for), and a new compile cache when a
    start failed in the one the pods use; those pods' samples; an Event and the problems to report (a
    full cache volume)."""
    selector = labels.selector_labels(svc.name).items()
    mine = [
        p
        for p in pods
        if (p.get("metadata") or {}).get("namespace") == svc.namespace
        and selector <= ((p.get("metadata") or {}).get("labels") or {}).items()
    ]
    measured, counted = startup.fold(svc.status.startup, mine)
    events: list[Event] = []
    problems: list[status.Problem] = []
    failures = startup.start_failures(mine)
    full = startup.cache_full(failures)
    if full is not None:
        problems.append(
            status.Problem(
                "CacheVolumeFull",
                f"pod {full.pod} failed for want of space ({_said(full.message, startup.NO_SPACE)}): the "
                "volume under /cache (the model cache, vLLM's compile cache) is full; give it more room "
                "(spec.model.source.hub.cache.sizeLimit, or the PVC's size) or free some",
            )
        )
    current = render.pods_cache_dir(svc)
    corrupt = startup.corrupt_compile_cache(failures, current)
    if corrupt is not None:
        fresh = startup.reset_compile_cache(measured, parse_time(now) or datetime.datetime.now(datetime.UTC))
        if fresh is not None:
            measured = fresh
            new_dir = render.compile_cache_dir(svc.spec, fresh.compile_cache_generation)
            events.append(
                Event(
                    "Warning",
                    "CompileCacheReset",
                    f"pod {corrupt.pod}'s engine failed in its compile cache {current} "
                    f"({_said(corrupt.message, startup.COMPILE_CACHE_MARK, current)}); the pods start over "
                    f"with an empty one, {new_dir}, and compile once more. If they still fail, the cause "
                    f"is elsewhere: kubectl logs {corrupt.pod} -c vllm --previous",
                )
            )
    measured = startup.with_budget(svc.spec, measured)
    if measured != svc.status.startup:
        svc = svc.model_copy(update={"status": svc.status.model_copy(update={"startup": measured})})
    return svc, counted, events, problems


def _said(message: str, *marks: str) -> str:
    """The last line of a log tail that has one of ``marks`` (else its last line), shortened."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = next((x for x in reversed(lines) if any(m and m in x for m in marks)), lines[-1] if lines else "")
    return line if len(line) <= 300 else line[:297] + "..."
