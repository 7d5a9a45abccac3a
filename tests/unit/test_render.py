"""Renderers: every spec field reaches the right vLLM flag or Kubernetes field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qwen_operator import api, labels, render
from qwen_operator.validation import InvalidSpec, parse
from qwen_operator.vllm_options import OPTIONS
from tests.conftest import DATA, load_examples
from tests.k8s import validate_k8s

VLLM_FLAGS = {
    line.strip()
    for line in (DATA / "vllm-0.32-cli-flags.txt").read_text().splitlines()
    if line.startswith("--")
}


def make(minimal: dict[str, Any], **spec: Any) -> api.QwenService:
    body = copy.deepcopy(minimal)
    body["spec"].update(spec)
    return parse(body)


def args(svc: api.QwenService) -> list[str]:
    return render.vllm_args(svc.spec)


# (spec overrides, expected flag sequence, or None when the flag must be absent)
FLAG_TABLE = [
    ({}, ["--served-model-name", "Qwen/Qwen2.5-7B-Instruct"]),
    (
        {"model": {"name": "Qwen/Qwen2.5-7B-Instruct", "servedModelName": "qwen"}},
        ["--served-model-name", "qwen"],
    ),
    ({"model": {"name": "Qwen/Q", "revision": "v1.1"}}, ["--revision", "v1.1"]),
    ({"model": {"name": "Qwen/Q", "trustRemoteCode": True}}, ["--trust-remote-code"]),
    ({"engine": {"dtype": "bfloat16"}}, ["--dtype", "bfloat16"]),
    ({"engine": {"maxModelLen": 10240}}, ["--max-model-len", "10240"]),
    ({"engine": {"tensorParallelSize": 4}}, ["--tensor-parallel-size", "4"]),
    ({"engine": {"gpuMemoryUtilization": 0.85}}, ["--gpu-memory-utilization", "0.85"]),
    ({"engine": {"enforceEager": True}}, ["--enforce-eager"]),
    ({"engine": {"quantization": "awq"}}, ["--quantization", "awq"]),
    ({"engine": {"cpuOffloadGB": 4}}, ["--cpu-offload-gb", "4"]),
    ({"engine": {"maxNumSeqs": 64}}, ["--max-num-seqs", "64"]),
    (
        {"engine": {"enableAutoToolChoice": True, "toolCallParser": "hermes"}},
        ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
    ),
    ({"engine": {"shutdownTimeoutSeconds": 120}}, ["--shutdown-timeout", "120"]),
    (
        {"engine": {"extraArgs": ["--enable-prefix-caching", "--kv-cache-dtype=fp8"]}},
        ["--enable-prefix-caching", "--kv-cache-dtype=fp8"],
    ),
]


def _contains(seq: list[str], sub: list[str]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


@pytest.mark.parametrize(("spec", "expected"), FLAG_TABLE, ids=[" ".join(e) for _, e in FLAG_TABLE])
def test_each_spec_field_maps_to_its_vllm_flag(minimal, spec, expected):
    assert _contains(args(make(minimal, **spec)), expected)


ABSENT_BY_DEFAULT = [
    "--dtype",
    "--max-model-len",
    "--enforce-eager",
    "--quantization",
    "--cpu-offload-gb",
    "--max-num-seqs",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "--trust-remote-code",
    "--revision",
    "--api-key",
]


def test_unset_fields_emit_no_flag(minimal):
    got = args(make(minimal))
    for flag in ABSENT_BY_DEFAULT:
        assert flag not in got


def test_every_emitted_flag_exists_in_vllm(minimal):
    everything = make(
        minimal,
        model={"name": "Qwen/Q", "revision": "main", "trustRemoteCode": True},
        engine={
            "dtype": "float16",
            "maxModelLen": 4096,
            "tensorParallelSize": 2,
            "enforceEager": True,
            "quantization": "awq",
            "cpuOffloadGB": 2,
            "maxNumSeqs": 8,
            "enableAutoToolChoice": True,
            "toolCallParser": "hermes",
            "loadFormat": "runai_streamer",
        },
    )
    emitted = {a.split("=")[0] for a in args(everything) if a.startswith("--")}
    assert emitted - VLLM_FLAGS == set()
    managed = {OPTIONS[dest][0] for dest in api.MANAGED_FLAGS}  # KeyError: a dest vLLM does not know
    assert managed - VLLM_FLAGS == set(), "a managed flag vLLM does not know"


def test_the_generated_option_table_matches_the_captured_vllm_help():
    """vllm_options (from vLLM's parser) and the captured `vllm serve --help=all` name the same flags."""
    long_options = {o for strings in OPTIONS.values() for o in strings if o.startswith("--")}
    negated = {o for o in long_options if o.startswith("--no-") and "--" + o[5:] in long_options}
    assert long_options - negated == VLLM_FLAGS  # the capture lists no --no-X switches


def test_model_path_follows_the_source(minimal):
    hub = make(minimal)
    pvc = make(minimal, model={"name": "Qwen/Q", "source": {"pvc": {"claimName": "w", "subPath": "qwen"}}})
    host = make(minimal, model={"name": "/data/q", "source": {"hostPath": {"path": "/mnt"}}})
    assert args(hub)[0] == "Qwen/Qwen2.5-7B-Instruct"
    assert args(pvc)[0] == "/models/Qwen/Q"
    assert args(host)[0] == "/data/q"
    assert "--revision" not in args(
        make(minimal, model={"name": "Q", "revision": "x", "source": {"pvc": {"claimName": "w"}}})
    )


def _pod(svc: api.QwenService) -> dict[str, Any]:
    pod: dict[str, Any] = render.render_deployment(svc)["spec"]["template"]["spec"]
    return pod


def _env(svc: api.QwenService) -> dict[str, Any]:
    return {e["name"]: e for e in _pod(svc)["containers"][0]["env"]}


def test_volumes_for_each_model_source(minimal):
    pvc = _pod(
        make(minimal, model={"name": "Q", "source": {"pvc": {"claimName": "weights", "subPath": "qwen"}}})
    )
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pvc[
        "volumes"
    ]
    assert {"name": "model", "mountPath": "/models", "readOnly": True, "subPath": "qwen"} in pvc[
        "containers"
    ][0]["volumeMounts"]
    host = _pod(make(minimal, model={"name": "Q", "source": {"hostPath": {"path": "/mnt/w"}}}))
    assert {"name": "model", "hostPath": {"path": "/mnt/w", "type": "Directory"}} in host["volumes"]
    hub = _pod(make(minimal, model={"name": "Q", "source": {"hub": {"cache": {"claimName": "hf"}}}}))
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "hf"}} in hub["volumes"]
    shm = next(v for v in hub["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_secrets_reach_the_pod_only_as_secret_references(minimal):
    svc = make(
        minimal,
        apiKeySecretRef={"name": "keys", "key": "api"},
        model={"name": "Q", "source": {"hub": {"tokenSecretRef": {"name": "hf", "key": "token"}}}},
    )
    env = _env(svc)
    assert env["VLLM_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "keys", "key": "api"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert not any("api-key" in a for a in args(svc))


def test_gpus_and_resources(minimal):
    res = _pod(make(minimal, engine={"tensorParallelSize": 2}, resources={"cpu": "8", "memory": "64Gi"}))
    r = res["containers"][0]["resources"]
    assert r["limits"] == {"nvidia.com/gpu": "2", "memory": "64Gi"}
    # The Hub cache is an emptyDir of 100Gi by default: the node must have room for it.
    assert r["requests"] == {"cpu": "8", "memory": "64Gi", "ephemeral-storage": "100Gi"}
    amd = _pod(make(minimal, resources={"gpus": 1, "gpuResourceName": "amd.com/gpu"}))
    assert amd["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "1"}
    cpu = _pod(make(minimal, resources={"gpus": 0}))
    assert cpu["containers"][0]["resources"] == {"requests": {"ephemeral-storage": "100Gi"}}


def test_the_disk_cache_is_requested_and_volumes_are_chowned_only_when_needed(minimal):
    small = _pod(make(minimal, model={"name": "x", "source": {"hub": {"cache": {"sizeLimit": "40Gi"}}}}))
    (cache,) = [v for v in small["volumes"] if v["name"] == "cache"]
    assert cache["emptyDir"]["sizeLimit"] == "40Gi"
    assert small["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "40Gi"
    on_pvc = _pod(
        make(minimal, model={"name": "x", "source": {"hub": {"cache": {"claimName": "hub-cache"}}}})
    )
    assert "ephemeral-storage" not in on_pvc["containers"][0]["resources"].get("requests", {})
    # A recursive chown of a large cache on every start takes minutes: only when the root differs.
    assert small["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_probes_fit_a_slow_model_load_and_drain_is_graceful(minimal):
    svc = make(minimal, engine={"startupTimeoutSeconds": 2400, "shutdownTimeoutSeconds": 90})
    pod = _pod(svc)
    c = pod["containers"][0]
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 2400
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > sleep + 90, "vLLM must finish draining before SIGKILL"
    dep = render.render_deployment(svc)
    assert dep["spec"]["progressDeadlineSeconds"] > 2400


def test_metadata_labels_selector_and_scrape_annotations(minimal):
    svc = make(minimal)
    dep, service, _budget = render.render_all(svc)
    for obj in (dep, service):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "qwen-operator"
        assert obj["metadata"]["labels"][labels.SERVICE_LABEL] == "qwen"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    tmpl = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items()
    assert tmpl["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert tmpl["metadata"]["labels"][labels.SERVICE_LABEL] == "qwen"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_spec_hash_changes_with_the_pod_template_only(minimal):
    def digest(svc: api.QwenService) -> str:
        return str(render.render_deployment(svc)["metadata"]["annotations"][labels.SPEC_HASH_ANNOTATION])

    base = digest(make(minimal))
    assert digest(make(minimal, replicas=4)) == base
    assert digest(make(minimal, engine={"maxModelLen": 2048})) != base


def test_security_context_is_tight(minimal):
    pod = _pod(make(minimal))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = pod["containers"][0]["securityContext"]
    assert c == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    root = _pod(make(minimal, security={"runAsUser": 0}))
    assert "runAsNonRoot" not in root["securityContext"]


def test_scheduling_fields(minimal):
    pod = _pod(
        make(
            minimal,
            scheduling={
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {}},
                "runtimeClassName": "nvidia",
                "priorityClassName": "high",
            },
        )
    )
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["priorityClassName"] == "high"


def test_replicas_with_and_without_autoscaling(minimal):
    assert render.render_deployment(make(minimal, replicas=3))["spec"]["replicas"] == 3
    scaled = make(minimal, replicas=3, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 6})
    assert render.render_deployment(scaled)["spec"]["replicas"] == 2
    # Advisory: the scaler reports, spec.replicas rules the Deployment.
    advisory = make(
        minimal,
        replicas=3,
        autoscaling={"enabled": True, "mode": "Advisory", "minReplicas": 2, "maxReplicas": 6},
    )
    assert render.render_deployment(advisory)["spec"]["replicas"] == 3


@pytest.mark.parametrize("example", load_examples(), ids=lambda d: d["metadata"]["name"])
def test_every_example_renders_objects_kubernetes_accepts(example):
    body = copy.deepcopy(example)
    body["metadata"].update(namespace="default", uid="0d8c4f4e-1111-2222-3333-444455556666")
    for obj in render.render_all(parse(body)):
        validate_k8s(obj)


def test_a_spec_with_every_field_renders_valid_objects(minimal):
    svc = make(
        minimal,
        engine={
            "extraArgs": ["--enable-prefix-caching"],
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "imagePullSecrets": ["regcred"],
            "prePullImage": True,
            "loadFormat": "fastsafetensors",
        },
        scheduling={
            "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
                        ]
                    }
                }
            },
            "topologySpreadConstraints": [
                {"topologyKey": "topology.kubernetes.io/zone"},
                {
                    "topologyKey": "kubernetes.io/hostname",
                    "maxSkew": 2,
                    "whenUnsatisfiable": "DoNotSchedule",
                    "minDomains": 2,
                    "nodeAffinityPolicy": "Honor",
                    "nodeTaintsPolicy": "Ignore",
                },
            ],
        },
        service={"type": "LoadBalancer", "port": 80},
        podMetadata={"labels": {"team": "ml"}, "annotations": {"karpenter.sh/do-not-disrupt": "true"}},
        rollout={"maxSurge": 0, "maxUnavailable": 1},
        disruptionBudget={"maxUnavailable": 2},
    )
    rendered = render.render_all(svc)
    assert [o["kind"] for o in rendered] == ["Deployment", "Service", "PodDisruptionBudget", "DaemonSet"]
    for obj in rendered:
        validate_k8s(obj)


def test_pod_hooks_reach_the_pods_and_leave_the_operator_s_own_keys_alone(minimal):
    """podMetadata, topology spread, the rollout strategy and the disruption budget, as a user sets them:
    the extra labels and annotations land on the pod template (not the selector), the spread counts only
    this service's pods, and a rollout without spare GPUs (maxSurge 0) takes one pod down first."""
    svc = make(
        minimal,
        podMetadata={"labels": {"team": "ml"}, "annotations": {"karpenter.sh/do-not-disrupt": "true"}},
        scheduling={"topologySpreadConstraints": [{"topologyKey": "topology.kubernetes.io/zone"}]},
        rollout={"maxSurge": 0, "maxUnavailable": 1},
    )
    dep = render.render_deployment(svc)
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "ml"
    assert meta["labels"].items() >= labels.common_labels("qwen").items()
    assert "team" not in dep["spec"]["selector"]["matchLabels"], (
        "the selector is immutable: never user labels"
    )
    assert meta["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": labels.selector_labels("qwen")},
    }
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # Changing the pods' annotations rolls them; the budget is not part of the pod template.
    plain = render.render_deployment(make(minimal))
    assert plain["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert dep["metadata"]["annotations"] != plain["metadata"]["annotations"]
    budget = render.render_disruption_budget(make(minimal))
    assert budget is not None
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": labels.selector_labels("qwen")},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    assert render.render_disruption_budget(make(minimal, disruptionBudget={"enabled": False})) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"podMetadata": {"labels": {"app.kubernetes.io/instance": "other"}}},
            "the operator sets these labels",
        ),
        ({"podMetadata": {"labels": {"serving.qwenops.io/service": "x"}}}, "the operator sets these labels"),
        (
            {"podMetadata": {"annotations": {"prometheus.io/port": "9"}}},
            "the operator sets these annotations",
        ),
        (
            {"podMetadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "9"}}},
            "the operator sets these annotations",
        ),
        ({"podMetadata": {"annotations": {"bad key!": "x"}}}, "is not a label key"),
        ({"rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "cannot both be 0"),
        ({"disruptionBudget": {"maxUnavailable": 0}}, "greater than or equal to 1"),
        (
            {"scheduling": {"topologySpreadConstraints": [{"topologyKey": "zone", "minDomains": 2}]}},
            "minDomains needs whenUnsatisfiable DoNotSchedule",
        ),
    ],
)
def test_pod_hooks_refuse_what_would_break_the_service(minimal, spec, message):
    body = copy.deepcopy(minimal)
    body["spec"].update(spec)
    with pytest.raises(InvalidSpec, match=message):
        parse(body)


def test_a_prefilled_cache_gets_a_download_job_and_pods_that_wait_for_it(minimal):
    """cache.prefill: one Job fills the claim (the serving pods' image, security and HF_HOME, no GPU, none
    of their labels); every serving pod waits for the marker the Job writes last, then starts offline."""
    name = "q" * 63  # the longest name a QwenService may have
    body = copy.deepcopy(minimal)
    body["metadata"]["name"] = name
    body["spec"]["model"] = {
        "name": "Qwen/Qwen2.5-7B-Instruct",
        "revision": "main",
        "source": {"hub": {"cache": {"claimName": "hf-cache", "prefill": True}}},
    }
    svc = parse(body)
    job = render.render_download_job(svc)
    assert job is not None
    validate_k8s(job)
    assert len(job["metadata"]["name"]) <= 63, "a Job's name is a label value on its pods"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["QWEN_MODEL"], env["QWEN_REVISION"]) == ("Qwen/Qwen2.5-7B-Instruct", "main")
    assert env["HF_HOME"] == "/cache/huggingface"
    assert pod["volumes"][0] == {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    assert "resources" not in container or "nvidia.com/gpu" not in str(container["resources"])
    selector = labels.selector_labels(name)
    assert not selector.items() & job["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True

    serving = render.render_deployment(svc)["spec"]["template"]["spec"]
    (wait,) = serving["initContainers"]
    marker = render.cache_marker(svc.spec)
    assert marker in wait["command"][-1]
    assert marker == env["QWEN_MARKER"]
    vllm_env = {e["name"]: e.get("value") for e in serving["containers"][0]["env"]}
    assert vllm_env["HF_HUB_OFFLINE"] == "1"

    # Another revision is another marker (and another download); without prefill, nothing of this.
    other = copy.deepcopy(body)
    other["spec"]["model"]["revision"] = "v2"
    assert render.cache_marker(parse(other).spec) != marker
    plain = make(minimal)
    assert render.render_download_job(plain) is None
    assert "initContainers" not in render.render_deployment(plain)["spec"]["template"]["spec"]
    without_claim = copy.deepcopy(body)
    without_claim["spec"]["model"]["source"]["hub"]["cache"] = {"prefill": True}
    with pytest.raises(InvalidSpec, match="prefill needs a claimName"):
        parse(without_claim)


def test_the_chat_page_calls_its_own_service_with_its_key_and_asks_for_a_login(minimal):
    """spec.chatUI: a Deployment and a Service of their own (none of the model's labels), the login and
    the API key from Secrets (never in the spec), the served model name, the same pod security."""
    svc = make(
        minimal,
        apiKeySecretRef={"name": "api", "key": "key"},
        chatUI={"enabled": True, "credentialsSecretRef": {"name": "chat-login"}, "title": "Ask Qwen"},
    )
    rendered = render.render_all(svc)
    for obj in rendered:
        validate_k8s(obj)
    chat = render.render_chat_ui(svc)
    assert chat is not None
    deployment, service = chat
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "qwen-chat"
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["QWEN_CHAT_BASE_URL"]["value"] == render.endpoint(svc)
    assert env["QWEN_CHAT_MODEL"]["value"] == svc.spec.served_model_name
    assert env["QWEN_CHAT_TITLE"]["value"] == "Ask Qwen"
    assert env["QWEN_CHAT_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "chat-login", "key": "username"}
    assert env["QWEN_CHAT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "chat-login", "key": "password"}
    assert env["QWEN_CHAT_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "api", "key": "key"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    model_selector = labels.selector_labels("qwen")
    assert not model_selector.items() & deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert render.chat_ui_url(svc) == "http://qwen-chat.ml.svc"
    # Off by default; a Secret is required when on; a long name still makes a valid Service name.
    assert render.render_chat_ui(make(minimal)) is None
    with pytest.raises(InvalidSpec, match=r"chatUI\.enabled needs credentialsSecretRef"):
        make(minimal, chatUI={"enabled": True})
    assert len(labels.chat_ui_name("q" * 63)) <= 63


@pytest.mark.parametrize("service_type", ["NodePort", "LoadBalancer"])
def test_a_chat_page_outside_the_cluster_needs_tls(minimal, service_type: str) -> None:
    """NodePort and LoadBalancer put the login page outside the cluster: refused in plain HTTP (by the
    operator and by the CRD's rule), served over HTTPS with a TLS Secret."""
    login = {"enabled": True, "credentialsSecretRef": {"name": "chat-login"}, "serviceType": service_type}
    with pytest.raises(InvalidSpec, match=r"set chatUI\.tlsSecretRef"):
        make(minimal, chatUI=login)
    rule = api.ChatUISpec.model_json_schema()["x-kubernetes-validations"][1]
    assert rule["rule"] == "self.serviceType == 'ClusterIP' || has(self.tlsSecretRef)"
    svc = make(minimal, chatUI={**login, "tlsSecretRef": "chat-tls"})
    for obj in render.render_all(svc):
        validate_k8s(obj)
    chat = render.render_chat_ui(svc)
    assert chat is not None
    deployment, service = chat
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["QWEN_CHAT_TLS_CERT"] == f"{mounted['tls']}/tls.crt"
    assert env["QWEN_CHAT_TLS_KEY"] == f"{mounted['tls']}/tls.key"
    assert {"name": "tls", "secret": {"secretName": "chat-tls", "defaultMode": 0o440}} in pod["volumes"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert service["spec"]["type"] == service_type
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert render.chat_ui_url(svc) == "https://qwen-chat.ml.svc"


def test_the_chat_page_s_image_is_the_operator_s_default_unless_the_spec_names_one(minimal) -> None:
    login = {"enabled": True, "credentialsSecretRef": {"name": "chat-login"}}
    ours = render.Defaults(chat_ui_image="registry.example.com/qwen-chat-ui:0.1.0")

    def image(svc: api.QwenService, defaults: render.Defaults) -> str:
        chat = render.render_chat_ui(svc, defaults)
        assert chat is not None
        return str(chat[0]["spec"]["template"]["spec"]["containers"][0]["image"])

    plain = make(minimal, chatUI=login)
    assert plain.spec.chat_ui.image is None, "the CRD no longer fills in a default the admin cannot change"
    assert image(plain, render.Defaults()) == api.DEFAULT_CHAT_UI_IMAGE
    assert image(plain, ours) == "registry.example.com/qwen-chat-ui:0.1.0"
    named = make(minimal, chatUI={**login, "image": "mine/chat:1"})
    assert image(named, ours) == "mine/chat:1"


def test_vllms_compile_cache_sits_on_the_cache_volume_keyed_by_what_invalidates_it(minimal):
    """VLLM_CACHE_ROOT (torch.compile's artefacts and vLLM's other caches) is on the cache volume, in a
    directory that a different model, revision, image, dtype, quantization, tensor parallelism or GPU
    never shares; what does not change the compiled graphs (replicas, the served name) keeps it."""

    def cache_root(**changes: Any) -> str:
        body = copy.deepcopy(minimal)
        for path, value in changes.items():
            node = body["spec"]
            *parents, leaf = path.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        pod = render.pod_template(parse(body))["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] == "vllm"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["VLLM_CACHE_ROOT"].startswith("/cache/vllm/")
        assert "/cache" in mounts
        return str(env["VLLM_CACHE_ROOT"])

    base = cache_root()
    assert cache_root(replicas=3) == base
    assert cache_root(model__servedModelName="other-name") == base
    for change in (
        {"model__name": "Qwen/Qwen2.5-14B-Instruct"},
        {"model__revision": "v2"},
        {"engine__image": "vllm/vllm-openai:v0.33.0"},
        {"engine__dtype": "float16"},
        {"engine__quantization": "fp8"},
        {"engine__tensorParallelSize": 2, "resources__gpus": 2},
        {"scheduling__nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
    ):
        assert cache_root(**change) != base, change


def test_the_router_fronts_the_model_with_least_rights_and_its_own_placement(minimal) -> None:
    """routing.mode Builtin: the Service clients call selects the router's pods; the vLLM pods get a
    headless Service of their own, which the router is told to watch; the router's Role reads
    EndpointSlices and nothing else; its pods run non-root, ask for no GPU, take none of the GPU
    placement, and check the API key from the Secret; its arguments are ones the router accepts."""
    from qwen_router.__main__ import parser

    svc = make(
        minimal,
        apiKeySecretRef={"name": "api", "key": "key"},
        routing={"mode": "Builtin", "builtin": {"holdSeconds": 120, "sessionHeader": ""}},
        networkPolicy={"enabled": True, "sameNamespace": False, "allowFrom": [{"podSelector": {"app": "c"}}]},
        scheduling={
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "inference",
        },
    )
    rendered = render.render_all(svc)
    for obj in rendered:
        validate_k8s(obj)
    by = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    assert len(by) == len(rendered), "two objects of one kind and name"
    router = by["Deployment", "qwen-router"]
    pod = router["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert by["Service", "qwen"]["spec"]["selector"] == labels.router_selector("qwen")
    engines = by["Service", "qwen-engines"]
    assert engines["spec"]["selector"] == labels.selector_labels("qwen")
    assert engines["spec"]["clusterIP"] == "None"
    args = parser().parse_args(container["args"])
    assert (args.service, args.engine_port_name, args.hold_seconds) == ("qwen-engines", "http", 120)
    assert args.session_header == ""
    assert args.api_key_env == args.engine_api_key_env == render.ROUTER_API_KEY_ENV
    env = {e["name"]: e for e in container["env"]}
    assert env[render.ROUTER_API_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "api", "key": "key"}
    assert args.grace_seconds < pod["terminationGracePeriodSeconds"]

    assert by["Role", "qwen-router"]["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = by["RoleBinding", "qwen-router"]
    assert binding["roleRef"]["name"] == "qwen-router"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "qwen-router", "namespace": "ml"}]
    assert pod["serviceAccountName"] == "qwen-router"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    assert pod["priorityClassName"] == "inference"
    assert (
        not labels.selector_labels("qwen").items() & router["spec"]["template"]["metadata"]["labels"].items()
    )
    budget = by["PodDisruptionBudget", "qwen-router"]
    assert budget["spec"]["selector"]["matchLabels"] == labels.router_selector("qwen")

    # The vLLM pods admit the router and the scrapers only; the router admits the spec's clients.
    engine_peers = by["NetworkPolicy", "qwen"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": labels.router_selector("qwen")}} in engine_peers
    assert {"podSelector": {"matchLabels": {"app": "c"}}} not in engine_peers
    router_policy = by["NetworkPolicy", "qwen-router"]["spec"]
    assert router_policy["podSelector"]["matchLabels"] == labels.router_selector("qwen")
    assert {"podSelector": {"matchLabels": {"app": "c"}}} in router_policy["ingress"][0]["from"]
    assert router_policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": api.ROUTER_PORT}]

    # Off (the default): none of it, and the Service selects the vLLM pods.
    plain = render.render_all(make(minimal))
    assert {o["kind"] for o in plain} == {"Deployment", "Service", "PodDisruptionBudget"}
    assert [o["spec"]["selector"] for o in plain if o["kind"] == "Service"] == [
        labels.selector_labels("qwen")
    ]
    assert render.render_router(make(minimal)) is None


def test_the_router_s_image_is_the_operator_s_default_unless_the_spec_names_one(minimal) -> None:
    def image(svc: api.QwenService, defaults: render.Defaults) -> str:
        objects = render.render_router(svc, defaults)
        assert objects is not None
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])

    ours = render.Defaults(router_image="registry.example.com/qwen-router:0.1.0")
    plain = make(minimal, routing={"mode": "Builtin"})
    assert image(plain, render.Defaults()) == api.DEFAULT_ROUTER_IMAGE
    assert image(plain, ours) == "registry.example.com/qwen-router:0.1.0"
    named = make(minimal, routing={"mode": "Builtin", "builtin": {"image": "mine/router:1"}})
    assert image(named, ours) == "mine/router:1"


@pytest.mark.parametrize(
    ("builtin", "message"),
    [
        ({"sessionHeader": "x session"}, "sessionHeader"),
        ({"replicas": 0}, "replicas"),
        ({"holdSeconds": 0}, "holdSeconds"),
    ],
)
def test_router_settings_that_cannot_work_are_refused(minimal, builtin, message) -> None:
    with pytest.raises(InvalidSpec, match=message):
        make(minimal, routing={"mode": "Builtin", "builtin": builtin})


POOL_CRD = DATA / "upstream" / "inference.networking.k8s.io_inferencepools-v1.6.0.yaml"
ROUTE_CRD = DATA / "upstream" / "gateway.networking.k8s.io_httproutes-v1.4.0.yaml"


def test_an_inference_pool_and_its_picker_are_what_the_upstream_crds_and_kubernetes_accept(minimal) -> None:
    """routing.mode InferencePool: the InferencePool and the HTTPRoute pass the Gateway API (Inference
    Extension)'s own CRD schemas and CEL rules (copies under tests/data/upstream); the rest,
    kubernetes-validate. The pool selects the vLLM pods on their port and names the picker's Service on
    its gRPC port; the picker reads only pods and the extension's objects; the vLLM pods' policy admits
    it; the Service NAME stays on the vLLM pods."""
    from tests.k8s import admission_errors, upstream_schema

    gateway = {"name": "inference-gw", "namespace": "gateways", "sectionName": "http"}
    svc = make(
        minimal,
        routing={
            "mode": "InferencePool",
            "inferencePool": {"gatewayRef": gateway, "failureMode": "FailClose"},
        },
        networkPolicy={"enabled": True},
    )
    rendered = render.render_all(svc)
    by = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    pool, route = by["InferencePool", "qwen"], by["HTTPRoute", "qwen"]
    assert admission_errors(pool, upstream_schema(POOL_CRD)) == []
    assert admission_errors(route, upstream_schema(ROUTE_CRD)) == []
    for obj in rendered:
        if obj["kind"] not in ("InferencePool", "HTTPRoute"):
            validate_k8s(obj)

    assert pool["spec"]["selector"]["matchLabels"] == labels.selector_labels("qwen")
    assert pool["spec"]["targetPorts"] == [{"number": api.VLLM_PORT}]
    picker = pool["spec"]["endpointPickerRef"]
    service = by["Service", "qwen-epp"]
    assert (picker["name"], picker["port"]["number"]) == ("qwen-epp", service["spec"]["ports"][0]["port"])
    assert picker["failureMode"] == "FailClose"
    deployment = by["Deployment", "qwen-epp"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == "qwen"
    assert args[args.index("--pool-namespace") + 1] == "ml"
    assert container["image"] == api.DEFAULT_ENDPOINT_PICKER_IMAGE
    config = args[args.index("--config-file") + 1]
    mounted = container["volumeMounts"][0]["mountPath"]
    assert config.startswith(mounted + "/")
    assert config.rsplit("/", 1)[1] in by["ConfigMap", "qwen-epp"]["data"]
    rules = by["Role", "qwen-epp"]["rules"]
    assert {r for rule in rules for r in rule["resources"]} == {
        "pods", "inferencepools", "inferenceobjectives", "inferencemodelrewrites"
    }  # fmt: skip
    assert all(rule["verbs"] == ["get", "list", "watch"] for rule in rules)
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", **gateway}
    ]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "qwen"
    peers = by["NetworkPolicy", "qwen"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": labels.epp_selector("qwen")}} in peers
    assert by["Service", "qwen"]["spec"]["selector"] == labels.selector_labels("qwen")
    assert ("Deployment", "qwen-router") not in by

    # Without a gatewayRef, no HTTPRoute (the pool is for a route of the user's own).
    bare = render.render_all(make(minimal, routing={"mode": "InferencePool"}))
    assert "HTTPRoute" not in {o["kind"] for o in bare}
    # The copies do check: a pool with a port twice is refused by the upstream rule.
    twice = {**pool, "spec": {**pool["spec"], "targetPorts": [{"number": 8000}, {"number": 8000}]}}
    assert admission_errors(twice, upstream_schema(POOL_CRD)) == ["port number must be unique"]


def test_the_image_pre_pull_lands_where_the_pods_may_and_is_never_a_replica(minimal):
    """engine.prePullImage: a DaemonSet whose init container is the serving image (pulled on each node
    the pods may land on: their node selector, tolerations and node affinity), held by the pause image
    the operator's admin chose; no GPU, and none of the serving pods' labels (the Service, the scaler
    and the disruption budget never count it)."""
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["l4"]}]}]
        }
    }
    svc = make(
        minimal,
        engine={"prePullImage": True, "image": "r.io/vllm:1", "imagePullSecrets": ["regcred"]},
        scheduling={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": node_affinity,
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
            },
        },
    )
    assert render.render_image_prepull(make(minimal)) is None, "off by default"
    ds = render.render_image_prepull(svc, render.Defaults(pause_image="mirror.io/pause:3.10"))
    assert ds is not None
    validate_k8s(ds)
    pod = ds["spec"]["template"]["spec"]
    (pull,) = pod["initContainers"]
    (hold,) = pod["containers"]
    assert (pull["image"], hold["image"]) == ("r.io/vllm:1", "mirror.io/pause:3.10")
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["affinity"] == {"nodeAffinity": node_affinity}, "pod (anti-)affinity is about serving pods"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    for c in (pull, hold):
        assert "nvidia.com/gpu" not in str(c["resources"])
    selector = labels.selector_labels("qwen").items()
    assert not selector <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert ds["metadata"]["ownerReferences"][0]["kind"] == "QwenService"


def test_the_startup_probe_asks_often_and_its_budget_grows_from_measured_starts(minimal):
    """Ready within STARTUP_PROBE_PERIOD_SECONDS of the engine serving; the spec's budget until a start
    measured in status.startup took more than a third of it, then the next step above three times it
    (and the Deployment's progress deadline with it)."""

    def probe(svc: api.QwenService) -> tuple[int, int]:
        dep = render.render_deployment(svc)
        p = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        return p["periodSeconds"] * p["failureThreshold"], dep["spec"]["progressDeadlineSeconds"]

    svc = make(minimal)
    assert render.STARTUP_PROBE_PERIOD_SECONDS <= 2
    assert probe(svc) == (1800, 1800 + render.PROGRESS_DEADLINE_MARGIN_SECONDS)

    def measured(engine: float) -> api.QwenService:
        sample = api.StartupSample(pod="p", uid="u", ready_at="2026-12-07T10:00:00Z", engine=engine)
        st = api.QwenServiceStatus(startup=api.StartupStatus(pods=1, recent=[sample]))
        return svc.model_copy(update={"status": st})

    assert probe(measured(500))[0] == 1800, "within a third of the budget: unchanged (no rollout)"
    assert probe(measured(700))[0] == 2700
    assert probe(measured(7000))[0] == 14400, "at most the CRD's maximum"
