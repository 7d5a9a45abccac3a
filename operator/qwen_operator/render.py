"""Render a QwenService into the Kubernetes objects that serve it (pure: plain dicts, no I/O).

Over 300 lines because the pod template is one object: the container, its probes, volumes, security
context and scheduling are built side by side so that what the API server will receive reads in order.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from qwen_operator import api, labels
from qwen_operator.gpu_targets import GPU_PRODUCT_LABEL
from qwen_operator.startup import probe_budget

MODELS_DIR = "/models"
CACHE_DIR = "/cache"
# Seconds the pod keeps serving after it is marked for deletion, so that endpoints drop it first.
PRESTOP_SLEEP_SECONDS = 10
# Extra grace beyond the pre-stop pause and vLLM's own drain, before the kubelet kills the pod.
GRACE_MARGIN_SECONDS = 15
# The startup probe asks often (a refused connection costs nothing), so a pod is Ready within about this
# long of its engine serving (the kubelet runs the readiness probe at once when the startup probe passes).
STARTUP_PROBE_PERIOD_SECONDS = 2
# Rollouts may take as long as a model load, and more: leave the Deployment controller room.
PROGRESS_DEADLINE_MARGIN_SECONDS = 600
# emptyDir for vLLM and torch caches when weights come from a volume (the Hub cache is sized apart).
SMALL_CACHE_SIZE = "10Gi"
CACHE_MARKERS = f"{CACHE_DIR}/.qwen-operator"  # one file per model@revision the download Job completed
# The download Job's program: the Hub client vLLM's image ships, into the same HF_HOME the server reads,
# then the marker the serving pods' init container waits for (written last: no pod starts on a partial
# download, and a Job that died half-way leaves none).
DOWNLOAD_SCRIPT = """\
import os, pathlib
from huggingface_hub import snapshot_download
path = snapshot_download(os.environ["QWEN_MODEL"], revision=os.environ.get("QWEN_REVISION") or None)
marker = pathlib.Path(os.environ["QWEN_MARKER"])
marker.parent.mkdir(parents=True, exist_ok=True)
marker.write_text(path + "\\n")
print("cached", os.environ["QWEN_MODEL"], "in", path, flush=True)
"""


def model_path(spec: api.QwenServiceSpec) -> str:
    """What vLLM is told to load: a Hub id, or a path under the mounted volume."""
    if spec.model.source.kind == "hub" or spec.model.name.startswith("/"):
        return spec.model.name
    return f"{MODELS_DIR}/{spec.model.name}"


def vllm_args(spec: api.QwenServiceSpec) -> list[str]:
    """The ``vllm serve`` arguments, one-to-one from the spec (flags only when set)."""
    e = spec.engine
    args = [
        model_path(spec),
        "--served-model-name",
        spec.served_model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(api.VLLM_PORT),
        "--tensor-parallel-size",
        str(e.tensor_parallel_size),
        "--gpu-memory-utilization",
        _num(e.gpu_memory_utilization),
        "--shutdown-timeout",
        str(e.shutdown_timeout_seconds),
    ]
    # (flag, value): None leaves the flag out, True is a bare switch, anything else is its value.
    optional: list[tuple[str, str | int | bool | None]] = [
        ("--revision", spec.model.revision if spec.model.source.kind == "hub" else None),
        ("--trust-remote-code", spec.model.trust_remote_code or None),
        ("--dtype", None if e.dtype == "auto" else e.dtype),
        ("--max-model-len", e.max_model_len),
        ("--enforce-eager", e.enforce_eager or None),
        ("--quantization", e.quantization),
        ("--cpu-offload-gb", None if e.cpu_offload_gb is None else _num(e.cpu_offload_gb)),
        ("--max-num-seqs", e.max_num_seqs),
        ("--enable-auto-tool-choice", e.enable_auto_tool_choice or None),
        ("--tool-call-parser", e.tool_call_parser),
        ("--load-format", e.load_format),
    ]
    for flag, value in optional:
        if value is True:
            args.append(flag)
        elif value is not None and value != "":
            args += [flag, str(value)]
    return args + list(e.extra_args)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _secret_env(name: str, ref: api.SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _hub_env(spec: api.QwenServiceSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": CACHE_DIR},
        {"name": "USER", "value": "vllm"},  # torch asks getpass for a user name; arbitrary UIDs have none
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
    ]
    hub = spec.model.source.hub
    if hub is not None and hub.token_secret_ref is not None:
        env.append(_secret_env("HF_TOKEN", hub.token_secret_ref))
    return env


def prefilled(spec: api.QwenServiceSpec) -> bool:
    """Whether a download Job fills the Hub cache before the serving pods start."""
    hub = spec.model.source.hub
    return hub is not None and hub.cache.prefill


def cache_key(spec: api.QwenServiceSpec) -> str:
    """What the cache holds: the model and revision (a change means a new download)."""
    return hashlib.sha256(f"{spec.model.name}@{spec.model.revision or ''}".encode()).hexdigest()[:16]


def compile_cache_dir(spec: api.QwenServiceSpec, generation: int = 0) -> str:
    """vLLM's own caches (``VLLM_CACHE_ROOT``: torch.compile's artefacts, CUDA graph and kernel
    caches) on the model cache's volume, in a directory keyed by everything that makes them invalid
    elsewhere: the model and its revision, the image (the vLLM and torch versions), dtype,
    quantization, tensor parallelism and the GPU product the pods are pinned to. On a shared claim the
    first replica fills it and the later ones, and restarts, read it; on a node-disk cache (an
    emptyDir) it lasts as long as the pod. vLLM adds its own hash of the configuration inside it.
    ``generation``: how many times the operator started it afresh after a start failed in it
    (status.startup.compileCacheGeneration); each is a new, empty directory."""
    engine = spec.engine
    parts = (
        spec.model.name,
        spec.model.revision or "",
        engine.image,
        engine.dtype,
        engine.quantization or "",
        str(engine.tensor_parallel_size),
        spec.scheduling.node_selector.get(GPU_PRODUCT_LABEL, ""),
    )
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return f"{CACHE_DIR}/vllm/{key}" + (f"-{generation}" if generation else "")


def cache_marker(spec: api.QwenServiceSpec) -> str:
    return f"{CACHE_MARKERS}/{cache_key(spec)}.complete"


def _env(spec: api.QwenServiceSpec, cache_dir: str) -> list[dict[str, Any]]:
    env = [
        *_hub_env(spec),
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "VLLM_CACHE_ROOT", "value": cache_dir},
    ]
    if prefilled(spec):  # the download Job filled the cache: start from it, without asking the Hub
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if spec.api_key_secret_ref is not None:
        env.append(_secret_env("VLLM_API_KEY", spec.api_key_secret_ref))
    for var in spec.engine.env:
        env.append(var.model_dump(by_alias=True, exclude_none=True))
    return env


def _volumes(spec: api.QwenServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    source = spec.model.source
    if (size := _disk_cache(spec)) is not None:
        volumes.append({"name": "cache", "emptyDir": {"sizeLimit": size}})
    elif source.hub is not None:
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": source.hub.cache.claim_name}})
    if source.pvc is not None:
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": True}}
            if source.pvc.read_only
            else {"name": "model", "persistentVolumeClaim": {"claimName": source.pvc.claim_name}}
        )
        mount: dict[str, Any] = {"name": "model", "mountPath": MODELS_DIR, "readOnly": source.pvc.read_only}
        if source.pvc.sub_path:
            mount["subPath"] = source.pvc.sub_path
        mounts.append(mount)
    elif source.host_path is not None:
        volumes.append({"name": "model", "hostPath": {"path": source.host_path.path, "type": "Directory"}})
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
    return volumes, mounts


def _disk_cache(spec: api.QwenServiceSpec) -> str | None:
    """The sizeLimit of the node-disk cache (an emptyDir), or None when the cache is a PVC."""
    source = spec.model.source
    if source.hub is not None and source.hub.cache.claim_name:
        return None
    return source.hub.cache.size_limit if source.hub is not None else SMALL_CACHE_SIZE


def _resources(spec: api.QwenServiceSpec) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    r = spec.resources
    if r.cpu:
        requests["cpu"] = r.cpu
    if (cache := _disk_cache(spec)) is not None:
        # The scheduler places the pod on a node with room for its cache (the emptyDir's sizeLimit only
        # evicts it once it is full).
        requests["ephemeral-storage"] = cache
    if r.memory:
        requests["memory"] = r.memory
        limits["memory"] = r.memory
    if spec.gpus_per_replica > 0:
        limits[r.gpu_resource_name] = str(spec.gpus_per_replica)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def termination_grace_seconds(spec: api.QwenServiceSpec) -> int:
    return PRESTOP_SLEEP_SECONDS + spec.engine.shutdown_timeout_seconds + GRACE_MARGIN_SECONDS


def _http_probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _container(
    spec: api.QwenServiceSpec, mounts: list[dict[str, Any]], budget: int, cache_dir: str
) -> dict[str, Any]:
    """The vLLM container; ``budget``: the seconds its engine may take to serve; ``cache_dir``: its
    compile cache."""
    startup = _http_probe(STARTUP_PROBE_PERIOD_SECONDS, 5, math.ceil(budget / STARTUP_PROBE_PERIOD_SECONDS))
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec.engine.image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        "command": ["vllm", "serve"],
        "args": vllm_args(spec),
        "ports": [{"name": "http", "containerPort": api.VLLM_PORT, "protocol": "TCP"}],
        "env": _env(spec, cache_dir),
        "volumeMounts": mounts,
        "startupProbe": startup,
        "readinessProbe": _http_probe(5, 5, 3),
        "livenessProbe": _http_probe(15, 10, 4),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
        "securityContext": _container_security(spec),
        # A failed start keeps its log's tail as the termination message: the operator reads why (a
        # full cache volume, a corrupt compile cache) from the pod's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    return container


def _container_security(spec: api.QwenServiceSpec) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": spec.security.read_only_root_filesystem,
        "capabilities": {"drop": ["ALL"]},
    }


SMALL_CONTAINER = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}


def _wait_for_cache(svc: api.QwenService) -> dict[str, Any]:
    """The init container that holds a serving pod until the download Job has filled the cache."""
    marker = cache_marker(svc.spec)
    job = labels.download_job_name(svc.name)
    return {
        "name": "wait-for-model-cache",
        "image": svc.spec.engine.image,
        "imagePullPolicy": svc.spec.engine.image_pull_policy,
        "command": [
            "sh",
            "-c",
            f'until [ -f "{marker}" ]; do echo "waiting for Job {job} to fill the model cache"; '
            "sleep 5; done",
        ],
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_DIR, "readOnly": True}],
        "resources": SMALL_CONTAINER,
        "securityContext": _container_security(svc.spec),
    }


def render_image_prepull(svc: api.QwenService, defaults: Defaults | None = None) -> dict[str, Any] | None:
    """The DaemonSet that pulls the serving image onto every node the serving pods may land on
    (``engine.prePullImage``), or None. Its init container is the serving image doing nothing, then a
    pause container holds the pod (and so the image: the kubelet's image GC spares images in use). It
    asks for no GPU, matches the pods' node selector, tolerations and node affinity (not their pod
    (anti-)affinity, which is about serving pods), and carries none of the serving pods' labels."""
    spec = svc.spec
    if not spec.engine.pre_pull_image:
        return None
    defaults = defaults or DEFAULTS
    small = {"resources": SMALL_CONTAINER, "securityContext": _container_security(spec)}
    pod: dict[str, Any] = {
        "initContainers": [
            {
                "name": "pull",
                "image": spec.engine.image,
                "imagePullPolicy": spec.engine.image_pull_policy,
                "command": ["sh", "-c", "true"],
                **small,
            }
        ],
        "containers": [{"name": "hold", "image": defaults.pause_image, **small}],
        "terminationGracePeriodSeconds": 1,
        **_pod_basics(spec),
    }
    sched = spec.scheduling
    if sched.node_selector:
        pod["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in sched.tolerations]
    if sched.affinity and sched.affinity.get("nodeAffinity"):
        pod["affinity"] = {"nodeAffinity": sched.affinity["nodeAffinity"]}
    own = labels.prepull_labels(svc.name)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _metadata(svc, name=labels.prepull_name(svc.name), object_labels=own),
        "spec": {
            "selector": {"matchLabels": own},
            # The pods serve nothing: all of them may be replaced at once when the image changes.
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {"metadata": {"labels": own}, "spec": pod},
        },
    }


def render_download_job(svc: api.QwenService) -> dict[str, Any] | None:
    """The Job that fills the Hub cache claim once (``cache.prefill``), or None. Its pods carry none of
    the serving pods' labels, ask for no GPU, and run as the serving pods do; the name is fixed and the
    model@revision it fills is an annotation, so a new model replaces it (a Job cannot be changed)."""
    spec = svc.spec
    hub = spec.model.source.hub
    if hub is None or not hub.cache.prefill:
        return None
    env = [
        *_hub_env(spec),
        {"name": "QWEN_MODEL", "value": spec.model.name},
        {"name": "QWEN_MARKER", "value": cache_marker(spec)},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if spec.model.revision:
        env.append({"name": "QWEN_REVISION", "value": spec.model.revision})
    pod: dict[str, Any] = {
        "restartPolicy": "OnFailure",
        "containers": [
            {
                "name": "download",
                "image": spec.engine.image,
                "imagePullPolicy": spec.engine.image_pull_policy,
                "command": ["python3", "-c", DOWNLOAD_SCRIPT],
                "env": env,
                "volumeMounts": [
                    {"name": "cache", "mountPath": CACHE_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                "securityContext": _container_security(spec),
            }
        ],
        "volumes": [
            {"name": "cache", "persistentVolumeClaim": {"claimName": hub.cache.claim_name}},
            {"name": "tmp", "emptyDir": {}},
        ],
        **_pod_basics(spec),
    }
    meta = _metadata(
        svc,
        {labels.CACHE_KEY_ANNOTATION: cache_key(spec)},
        name=labels.download_job_name(svc.name),
        object_labels=labels.download_labels(svc.name),
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 6,  # the Hub's rate limits and flaky networks: retries with back-off
            "template": {"metadata": {"labels": labels.download_labels(svc.name)}, "spec": pod},
        },
    }


def _pod_basics(spec: api.QwenServiceSpec) -> dict[str, Any]:
    """What every pod the operator renders (the server's, the download Job's, the chat page's) has: the
    pod security context, no service-account token (none of them talks to the API server), no service
    links (a Service named "vllm" would inject VLLM_PORT and break vLLM), and the engine's pull Secrets."""
    basics: dict[str, Any] = {
        "securityContext": _pod_security(spec),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if spec.engine.image_pull_secrets:
        basics["imagePullSecrets"] = [{"name": name} for name in spec.engine.image_pull_secrets]
    return basics


def _pod_security(spec: api.QwenServiceSpec) -> dict[str, Any]:
    uid = spec.security.run_as_user
    ctx: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if uid == 0:
        return ctx
    # OnRootMismatch: the kubelet chowns a volume only when its root is not the group's already; a
    # recursive chown of a large model cache on every start takes minutes.
    return {
        **ctx,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "fsGroupChangePolicy": "OnRootMismatch",
    }


def pods_cache_dir(svc: api.QwenService) -> str:
    """The compile cache directory the service's pods get now (its generation is in status.startup)."""
    startup = svc.status.startup
    return compile_cache_dir(svc.spec, startup.compile_cache_generation if startup is not None else 0)


def startup_budget(svc: api.QwenService) -> int:
    """Seconds the engine may take to serve before the kubelet restarts it: the spec's, raised from the
    starts measured (status.startup; qwen_operator.startup.probe_budget)."""
    return probe_budget(svc.spec, svc.status.startup)[0]


def pod_template(svc: api.QwenService) -> dict[str, Any]:
    spec = svc.spec
    volumes, mounts = _volumes(spec)
    pod: dict[str, Any] = {
        "containers": [_container(spec, mounts, startup_budget(svc), pods_cache_dir(svc))],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        **_pod_basics(spec),
    }
    sched = spec.scheduling
    if sched.node_selector:
        pod["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in sched.tolerations]
    if sched.affinity:
        pod["affinity"] = sched.affinity
    if sched.topology_spread_constraints:
        pod["topologySpreadConstraints"] = [_spread(svc, c) for c in sched.topology_spread_constraints]
    for field, key in (
        (sched.runtime_class_name, "runtimeClassName"),
        (sched.priority_class_name, "priorityClassName"),
        (sched.service_account_name, "serviceAccountName"),
    ):
        if field:
            pod[key] = field
    if prefilled(spec):
        pod["initContainers"] = [_wait_for_cache(svc)]
    extra = spec.pod_metadata  # the model refuses the operator's own keys
    return {
        "metadata": {
            "labels": {**extra.labels, **labels.common_labels(svc.name)},
            "annotations": {
                **extra.annotations,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(api.VLLM_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod,
    }


def _spread(svc: api.QwenService, c: api.TopologySpread) -> dict[str, Any]:
    """One topologySpreadConstraint, over this service's pods."""
    out: dict[str, Any] = {
        "maxSkew": c.max_skew,
        "topologyKey": c.topology_key,
        "whenUnsatisfiable": c.when_unsatisfiable,
        "labelSelector": {"matchLabels": labels.selector_labels(svc.name)},
    }
    for value, key in (
        (c.min_domains, "minDomains"),
        (c.node_affinity_policy, "nodeAffinityPolicy"),
        (c.node_taints_policy, "nodeTaintsPolicy"),
    ):
        if value is not None:
            out[key] = value
    return out


def spec_hash(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def owner_references(svc: api.QwenService) -> list[dict[str, Any]]:
    if not svc.metadata.uid:
        return []
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": svc.name,
            "uid": svc.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _metadata(
    svc: api.QwenService,
    annotations: dict[str, str] | None = None,
    name: str | None = None,
    object_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An owned object's metadata: the service's name and common labels unless others are given."""
    meta: dict[str, Any] = {
        "name": name or svc.name,
        "namespace": svc.namespace,
        "labels": object_labels if object_labels is not None else labels.common_labels(svc.name),
    }
    if annotations:
        meta["annotations"] = annotations
    owners = owner_references(svc)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def initial_replicas(svc: api.QwenService) -> int:
    """Replicas a new Deployment starts with."""
    if not svc.spec.autoscaling.owns_replicas:
        return svc.spec.replicas
    a = svc.spec.autoscaling
    desired = svc.status.desired_replicas
    if desired is None:  # a new service starts with one replica even at minReplicas 0 (it shows it loads)
        desired = max(a.min_replicas, 1)
    return min(max(desired, a.min_replicas), a.max_replicas)


def render_deployment(svc: api.QwenService) -> dict[str, Any]:
    template = pod_template(svc)
    digest = spec_hash(template)
    template["metadata"]["annotations"][labels.SPEC_HASH_ANNOTATION] = digest
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(svc, {labels.SPEC_HASH_ANNOTATION: digest}),
        "spec": {
            "replicas": initial_replicas(svc),
            "selector": {"matchLabels": labels.selector_labels(svc.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": svc.spec.rollout.max_surge,
                    "maxUnavailable": svc.spec.rollout.max_unavailable,
                },
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": startup_budget(svc) + PROGRESS_DEADLINE_MARGIN_SECONDS,
            "template": template,
        },
    }


def render_service(svc: api.QwenService, to_router: bool | None = None) -> dict[str, Any]:
    """The Service clients call (``NAME``): the router's pods with routing Builtin, else the vLLM pods.
    ``to_router`` overrides the choice while the router is on its way in (see reconcile)."""
    if to_router is None:
        to_router = svc.spec.routing.router is not None
    selector = labels.router_selector(svc.name) if to_router else labels.selector_labels(svc.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(svc),
        "spec": {
            "type": svc.spec.service.type,
            "selector": selector,
            "ports": [
                {"name": "http", "port": svc.spec.service.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def render_engines_service(svc: api.QwenService) -> dict[str, Any] | None:
    """With the router, the vLLM pods' own Service (``NAME-engines``), or None: headless (the router
    picks the pod, no virtual IP is needed), its EndpointSlices are what the router watches."""
    if svc.spec.routing.router is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(svc, name=labels.engines_name(svc.name)),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": labels.selector_labels(svc.name),
            "ports": [{"name": "http", "port": api.VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_network_policy(svc: api.QwenService) -> dict[str, Any] | None:
    """A NetworkPolicy that admits traffic to the server's port only from the peers the spec names, or
    None when the spec asks for none. No peer at all means no ingress (an empty ``from`` would mean
    everyone)."""
    net = svc.spec.network_policy
    if not net.enabled:
        return None
    if svc.spec.routing.router is not None:  # clients reach the router; the vLLM pods, only it
        peers = [{"podSelector": {"matchLabels": labels.router_selector(svc.name)}}, *_monitoring(net)]
    else:
        peers = _client_peers(svc)
    if svc.spec.routing.pool is not None:  # the endpoint picker reads the pods' /metrics
        peers.append({"podSelector": {"matchLabels": labels.epp_selector(svc.name)}})
    return _network_policy(_metadata(svc), labels.selector_labels(svc.name), peers, api.VLLM_PORT)


def render_router_network_policy(svc: api.QwenService) -> dict[str, Any] | None:
    """With the router and spec.networkPolicy: the router's pods admit the clients the spec names."""
    if not svc.spec.network_policy.enabled or svc.spec.routing.router is None:
        return None
    meta = _metadata(svc, name=labels.router_name(svc.name), object_labels=labels.router_labels(svc.name))
    return _network_policy(meta, labels.router_selector(svc.name), _client_peers(svc), api.ROUTER_PORT)


def _monitoring(net: api.NetworkPolicySpec) -> list[dict[str, Any]]:
    return [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        for namespace in net.monitoring_namespaces
    ]


def _client_peers(svc: api.QwenService) -> list[dict[str, Any]]:
    """Who may call the model: this namespace (or only the chat page), the monitoring namespaces and
    the spec's own peers."""
    net = svc.spec.network_policy
    peers: list[dict[str, Any]] = []
    if net.same_namespace:
        peers.append({"podSelector": {}})
    elif svc.spec.chat_ui.enabled:  # the chat page calls the model from its own pods
        peers.append({"podSelector": {"matchLabels": labels.chat_ui_selector(svc.name)}})
    peers += _monitoring(net)
    for peer in net.allow_from:
        one: dict[str, Any] = {}
        if peer.namespace_selector is not None:
            one["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector)}
        if peer.pod_selector is not None:
            one["podSelector"] = {"matchLabels": dict(peer.pod_selector)}
        peers.append(one)
    return peers


def _network_policy(
    meta: dict[str, Any], selector: dict[str, str], peers: list[dict[str, Any]], port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": port}]}] if peers else [],
        },
    }


def render_disruption_budget(svc: api.QwenService) -> dict[str, Any] | None:
    """A PodDisruptionBudget over the vLLM pods, or None when the spec turns it off. Evictions (a node
    drain, a cluster autoscaler's consolidation) take at most ``maxUnavailable`` pods at once; a pod that
    is not Ready (loading weights, crash-looping) serves nothing, so it may always be evicted and never
    blocks a drain (``unhealthyPodEvictionPolicy: AlwaysAllow``). A scale-down deletes pods through the
    ReplicaSet and is not held back."""
    budget = svc.spec.disruption_budget
    if not budget.enabled:
        return None
    return _budget(_metadata(svc), labels.selector_labels(svc.name), budget.max_unavailable)


def _budget(meta: dict[str, Any], selector: dict[str, str], max_unavailable: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta,
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": selector},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


@dataclass(frozen=True)
class Defaults:
    """What the operator's admin chose for what a spec leaves out (operator settings, chart values)."""

    chat_ui_image: str = api.DEFAULT_CHAT_UI_IMAGE
    router_image: str = api.DEFAULT_ROUTER_IMAGE
    endpoint_picker_image: str = api.DEFAULT_ENDPOINT_PICKER_IMAGE
    pause_image: str = api.DEFAULT_PAUSE_IMAGE


DEFAULTS = Defaults()  # an operator with no settings of its own


def render_chat_ui(
    svc: api.QwenService, defaults: Defaults = DEFAULTS
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The chat page's Deployment and Service (``spec.chatUI``), or None. One replica of the Gradio app
    in images/chatui: it asks for the user name and password of the named Secret, and streams chat
    completions from this service's own endpoint (with its API key when it has one)."""
    chat = svc.spec.chat_ui
    if not chat.enabled or chat.credentials_secret_ref is None:
        return None
    spec, name = svc.spec, labels.chat_ui_name(svc.name)
    creds = chat.credentials_secret_ref
    env: list[dict[str, Any]] = [
        {"name": "QWEN_CHAT_BASE_URL", "value": endpoint(svc)},
        {"name": "QWEN_CHAT_MODEL", "value": spec.served_model_name},
        {"name": "QWEN_CHAT_TITLE", "value": chat.title},
        _secret_env("QWEN_CHAT_USERNAME", api.SecretKeyRef(name=creds.name, key=creds.username_key)),
        _secret_env("QWEN_CHAT_PASSWORD", api.SecretKeyRef(name=creds.name, key=creds.password_key)),
        {"name": "GRADIO_SERVER_NAME", "value": "0.0.0.0"},
        {"name": "GRADIO_SERVER_PORT", "value": str(api.CHAT_UI_PORT)},
        {"name": "GRADIO_ANALYTICS_ENABLED", "value": "False"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if spec.api_key_secret_ref is not None:
        env.append(_secret_env("QWEN_CHAT_API_KEY", spec.api_key_secret_ref))
    port_name = "https" if chat.tls_secret_ref else "http"
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if chat.tls_secret_ref is not None:  # HTTPS with the named certificate (NodePort, LoadBalancer)
        env += [
            {"name": "QWEN_CHAT_TLS_CERT", "value": f"{CHAT_UI_TLS_DIR}/tls.crt"},
            {"name": "QWEN_CHAT_TLS_KEY", "value": f"{CHAT_UI_TLS_DIR}/tls.key"},
        ]
        mounts.append({"name": "tls", "mountPath": CHAT_UI_TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": chat.tls_secret_ref, "defaultMode": 0o440}})
    pod: dict[str, Any] = {
        "containers": [
            {
                "name": "chat",
                "image": chat.image or defaults.chat_ui_image,
                "imagePullPolicy": spec.engine.image_pull_policy,
                "ports": [{"name": port_name, "containerPort": api.CHAT_UI_PORT, "protocol": "TCP"}],
                "env": env,
                "volumeMounts": mounts,
                "readinessProbe": {
                    "httpGet": {"path": "/", "port": port_name, "scheme": port_name.upper()},
                    "periodSeconds": 10,
                    "timeoutSeconds": 5,
                },
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                "securityContext": _container_security(spec),
            }
        ],
        "volumes": volumes,
        **_pod_basics(spec),
    }
    meta = _metadata(svc, name=name, object_labels=labels.chat_ui_labels(svc.name))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels.chat_ui_selector(svc.name)},
            "template": {"metadata": {"labels": labels.chat_ui_labels(svc.name)}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(meta),
        "spec": {
            "type": chat.service_type,
            "selector": labels.chat_ui_selector(svc.name),
            "ports": [
                {
                    "name": port_name,
                    "port": 443 if chat.tls_secret_ref else 80,
                    "targetPort": port_name,
                    "protocol": "TCP",
                }
            ],
        },
    }
    return deployment, service


def _rule(group: str, *resources: str, verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": list(resources), "verbs": verbs}


def _identity(meta: Any, name: str, namespace: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A component's ServiceAccount (no token unless its pod asks), its Role with ``rules`` and the
    RoleBinding between them, all called ``name`` with ``meta()``'s metadata."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(),
            "automountServiceAccountToken": False,
        },
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(), "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


ROUTER_API_KEY_ENV = "QWEN_ROUTER_API_KEY"
ROUTER_USER = 10001  # the router image's user
ROUTER_PROGRESS_DEADLINE_SECONDS = 180  # a router that is not up by then is reported (RouterUnavailable)
ROUTER_GRACE_SECONDS = 60  # the router finishes the streams it carries before it exits (SIGTERM)


def render_router(svc: api.QwenService, defaults: Defaults = DEFAULTS) -> list[dict[str, Any]] | None:
    """The built-in router (``spec.routing.mode: Builtin``), or None: its ServiceAccount, a Role that
    reads this namespace's EndpointSlices and nothing else, the RoleBinding, the Deployment (replicas
    spread over nodes) and a PodDisruptionBudget. It runs as the image's non-root user whatever the
    vLLM pods run as, needs no GPU and inherits none of their node placement; with an API key it checks
    the key itself (so that a caller without one never waits in its queue) and sends it to the pods."""
    router = svc.spec.routing.router
    if router is None:
        return None
    spec, name = svc.spec, labels.router_name(svc.name)
    args = [
        "--port",
        str(api.ROUTER_PORT),
        "--service",
        labels.engines_name(svc.name),
        "--engine-port-name",
        "http",
        "--hold-seconds",
        str(router.hold_seconds),
        "--queue-size",
        str(router.queue_size),
        "--session-header",
        router.session_header,
        "--grace-seconds",
        str(ROUTER_GRACE_SECONDS - 10),
    ]
    env: list[dict[str, Any]] = [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    if spec.api_key_secret_ref is not None:
        env.append(_secret_env(ROUTER_API_KEY_ENV, spec.api_key_secret_ref))
        args += ["--api-key-env", ROUTER_API_KEY_ENV, "--engine-api-key-env", ROUTER_API_KEY_ENV]
    # Live while it answers; ready once it has listed the engines (until then a request would wait
    # for the list behind a Service that already sends it here).
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "timeoutSeconds": 3}
    ready_probe = {"httpGet": {"path": "/readyz", "port": "http"}, "timeoutSeconds": 3}
    container = {
        "name": "router",
        "image": router.image or defaults.router_image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        "args": args,
        "ports": [{"name": "http", "containerPort": api.ROUTER_PORT, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": {**ready_probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        # Endpoints drop the pod before it stops taking connections.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    selector = labels.router_selector(svc.name)
    pod: dict[str, Any] = {
        **_pod_basics(spec),
        "serviceAccountName": name,
        "automountServiceAccountToken": True,  # it watches EndpointSlices
        "securityContext": {
            "seccompProfile": {"type": "RuntimeDefault"},
            "runAsNonRoot": True,
            "runAsUser": ROUTER_USER,
            "runAsGroup": ROUTER_USER,
        },
        "containers": [container],
        "terminationGracePeriodSeconds": ROUTER_GRACE_SECONDS,
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": selector},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        },
    }
    if spec.scheduling.priority_class_name:  # as critical as the model it fronts
        pod["priorityClassName"] = spec.scheduling.priority_class_name
    pod_labels = labels.router_labels(svc.name)

    def meta() -> dict[str, Any]:
        return _metadata(svc, name=name, object_labels=labels.router_labels(svc.name))

    read = ["get", "list", "watch"]
    return [
        *_identity(meta, name, svc.namespace, [_rule("discovery.k8s.io", "endpointslices", verbs=read)]),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": router.replicas,
                "selector": {"matchLabels": selector},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "revisionHistoryLimit": 3,
                "progressDeadlineSeconds": ROUTER_PROGRESS_DEADLINE_SECONDS,
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(api.ROUTER_PORT),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": pod,
                },
            },
        },
        _budget(meta(), selector, 1),
    ]


EPP_GRPC_PORT, EPP_HEALTH_PORT, EPP_METRICS_PORT = 9002, 9003, 9090  # upstream's defaults
EPP_CONFIG_FILE = "default-plugins.yaml"
# The endpoint picker's plugins: vLLM's queue, KV-cache usage and prefix cache, weighed as the upstream
# chart weighs them by default (2, 2, 3); the metrics read from each pod's /metrics.
EPP_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: http
    path: /metrics
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""


def render_inference_pool(svc: api.QwenService, defaults: Defaults = DEFAULTS) -> list[dict[str, Any]] | None:
    """``spec.routing.mode: InferencePool`` (Gateway API Inference Extension,
    ``inference.networking.k8s.io/v1``), or None: the InferencePool ``NAME`` of the vLLM pods, its
    endpoint picker (a ServiceAccount whose Role reads pods and the extension's objects in this
    namespace, the plugins' ConfigMap, a one-replica Deployment, as upstream recommends, and its gRPC
    Service ``NAME-epp``) and, with a ``gatewayRef``, an HTTPRoute ``NAME`` from that Gateway to the
    pool. The Service ``NAME`` stays as it is."""
    pool = svc.spec.routing.pool
    if pool is None:
        return None
    spec, name = svc.spec, labels.epp_name(svc.name)
    selector = labels.epp_selector(svc.name)

    def meta() -> dict[str, Any]:
        return _metadata(svc, name=name, object_labels=labels.epp_labels(svc.name))

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    grpc = {"port": EPP_HEALTH_PORT, "service": "inference-extension"}
    container = {
        "name": "epp",
        "image": pool.endpoint_picker_image or defaults.endpoint_picker_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "--pool-name",
            svc.name,
            "--pool-namespace",
            svc.namespace,
            "--pool-group",
            "inference.networking.k8s.io",
            "--grpc-port",
            str(EPP_GRPC_PORT),
            "--grpc-health-port",
            str(EPP_HEALTH_PORT),
            "--metrics-port",
            str(EPP_METRICS_PORT),
            "--zap-encoder",
            "json",
            "--config-file",
            f"/config/{EPP_CONFIG_FILE}",
            "--tracing=false",
            "--metrics-endpoint-auth=false",
        ],
        "ports": [
            {"name": "grpc", "containerPort": EPP_GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": EPP_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "NAMESPACE", **field("metadata.namespace")},
            {"name": "POD_NAME", **field("metadata.name")},
        ],
        "livenessProbe": {"grpc": grpc, "initialDelaySeconds": 5, "periodSeconds": 10},
        "readinessProbe": {"grpc": grpc, "periodSeconds": 2},
        "volumeMounts": [{"name": "plugins", "mountPath": "/config", "readOnly": True}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: dict[str, Any] = {
        **_pod_basics(spec),
        "serviceAccountName": name,
        "automountServiceAccountToken": True,  # it watches the pool and its pods
        "securityContext": {
            "seccompProfile": {"type": "RuntimeDefault"},
            "runAsNonRoot": True,
            "runAsUser": 65532,  # the upstream image is distroless, nonroot
            "runAsGroup": 65532,
        },
        "containers": [container],
        # As long as the longest request through it may take (upstream: the pool's longest grace).
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "volumes": [{"name": "plugins", "configMap": {"name": name}}],
    }
    if spec.scheduling.priority_class_name:
        pod["priorityClassName"] = spec.scheduling.priority_class_name
    read = ["get", "list", "watch"]
    objects: list[dict[str, Any]] = [
        *_identity(
            meta,
            name,
            svc.namespace,
            [
                _rule("", "pods", verbs=read),
                _rule("inference.networking.k8s.io", "inferencepools", verbs=read),
                _rule(
                    "inference.networking.x-k8s.io",
                    "inferenceobjectives",
                    "inferencemodelrewrites",
                    verbs=read,
                ),
            ],
        ),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(), "data": {EPP_CONFIG_FILE: EPP_CONFIG}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": selector},
                # One active picker (its prefix-cache view is its own): the old goes before the new starts.
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 3,
                "template": {
                    "metadata": {
                        "labels": labels.epp_labels(svc.name),
                        "annotations": {"checksum/config": spec_hash(EPP_CONFIG)},
                    },
                    "spec": pod,
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {
                        "name": "grpc",
                        "port": EPP_GRPC_PORT,
                        "targetPort": "grpc",
                        "protocol": "TCP",
                        "appProtocol": "http2",
                    }
                ],
            },
        },
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": _metadata(svc),
            "spec": {
                "selector": {"matchLabels": labels.selector_labels(svc.name)},
                "targetPorts": [{"number": api.VLLM_PORT}],
                "endpointPickerRef": {
                    "name": name,
                    "port": {"number": EPP_GRPC_PORT},
                    "failureMode": pool.failure_mode,
                },
            },
        },
    ]
    gateway = pool.gateway_ref
    if gateway is not None:
        parent: dict[str, Any] = {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": gateway.name,
        }
        if gateway.namespace:
            parent["namespace"] = gateway.namespace
        if gateway.section_name:
            parent["sectionName"] = gateway.section_name
        objects.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": _metadata(svc),
                "spec": {
                    "parentRefs": [parent],
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [
                                {
                                    "group": "inference.networking.k8s.io",
                                    "kind": "InferencePool",
                                    "name": svc.name,
                                }
                            ],
                        }
                    ],
                },
            }
        )
    return objects


CHAT_UI_TLS_DIR = "/etc/qwen-chat/tls"


def chat_ui_url(svc: api.QwenService) -> str | None:
    if not svc.spec.chat_ui.enabled:
        return None
    scheme = "https" if svc.spec.chat_ui.tls_secret_ref else "http"
    return f"{scheme}://{labels.chat_ui_name(svc.name)}.{svc.namespace}.svc"


def endpoint(svc: api.QwenService) -> str:
    return f"http://{svc.name}.{svc.namespace}.svc:{svc.spec.service.port}/v1"


def render_all(svc: api.QwenService, defaults: Defaults = DEFAULTS) -> list[dict[str, Any]]:
    optional = (
        render_network_policy(svc),
        render_disruption_budget(svc),
        render_download_job(svc),
        render_image_prepull(svc, defaults),
        render_engines_service(svc),
        render_router_network_policy(svc),
    )
    chat = render_chat_ui(svc, defaults) or ()
    router = render_router(svc, defaults) or render_inference_pool(svc, defaults) or ()
    return [
        render_deployment(svc),
        render_service(svc),
        *(o for o in optional if o is not None),
        *router,
        *chat,
    ]
