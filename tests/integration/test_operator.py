"""The real kopf operator against the kmock emulator: what a user sees after kubectl apply."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qwen_operator import labels
from qwen_tools.emulator import JOBS, PDBS, Emulator
from qwen_tools.emulator import NETWORKPOLICIES as NETPOL
from tests.integration.conftest import DEPLOY, EVENTS, QSVC, SERVICE, eventually
from tests.k8s import validate_k8s

pytestmark = pytest.mark.integration

NS = "ml"
HASH = "serving.qwenops.io/spec-hash"


def qsvc(name: str = "qwen", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct"},
            "engine": {"dtype": "float16", "maxModelLen": 10240},
            "replicas": 2,
        },
    }
    body["spec"].update(spec)
    return body


def args_of(dep: dict[str, Any]) -> list[str]:
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def flag(dep: dict[str, Any], name: str) -> str | None:
    args = args_of(dep)
    return args[args.index(name) + 1] if name in args else None


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in (obj or {}).get("status", {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return None


def events(emulator: Emulator, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in emulator.items(EVENTS, NS)
        if e.get("involvedObject", {}).get("name") == name and (reason is None or e.get("reason") == reason)
    ]


async def play_deployment_controller(emulator: Emulator, name: str, ready: int) -> None:
    """What the Deployment controller and kubelets would report once pods are up."""
    dep = emulator.get(DEPLOY, NS, name)
    assert dep is not None
    await emulator.patch(
        DEPLOY,
        NS,
        name,
        {
            "status": {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": dep["spec"]["replicas"],
                "updatedReplicas": dep["spec"]["replicas"],
                "readyReplicas": ready,
                "availableReplicas": ready,
            }
        },
        sub="status",
    )


async def test_create_makes_deployment_and_service_owned_by_the_qwenservice(emulator, operator):
    created = await emulator.put(QSVC, qsvc())
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    svc = await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service")

    assert dep["spec"]["replicas"] == 2
    assert args_of(dep)[0] == "Qwen/Qwen2.5-7B-Instruct"
    assert flag(dep, "--max-model-len") == "10240"
    assert flag(dep, "--dtype") == "float16"
    for obj in (dep, svc):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == created["metadata"]["uid"]
        assert owner["controller"] is True
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

    status = await eventually(lambda: (emulator.get(QSVC, NS, "qwen") or {}).get("status"), what="status")
    assert status["phase"] == "Progressing"
    assert status["endpoint"] == "http://qwen.ml.svc:8000/v1"
    assert status["selector"] == "app.kubernetes.io/instance=qwen,serving.qwenops.io/service=qwen"
    assert status["observedGeneration"] == 1
    assert condition(emulator.get(QSVC, NS, "qwen"), "Ready")["status"] == "False"
    await eventually(lambda: events(emulator, "qwen", "Created"), what="Created events")


async def test_status_follows_the_deployments_ready_replicas(emulator, operator):
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")

    await play_deployment_controller(emulator, "qwen", ready=1)
    got = await eventually(
        lambda: (s := emulator.get(QSVC, NS, "qwen")) and s.get("status", {}).get("readyReplicas") == 1 and s,
        what="1 ready",
    )
    assert got["status"]["phase"] == "Progressing"

    await play_deployment_controller(emulator, "qwen", ready=2)
    got = await eventually(
        lambda: (s := emulator.get(QSVC, NS, "qwen")) and s["status"].get("phase") == "Ready" and s,
        what="phase Ready",
    )
    assert got["status"]["readyReplicas"] == 2
    assert got["status"]["replicas"] == 2
    ready = condition(got, "Ready")
    assert ready is not None
    assert ready["status"] == "True"
    assert ready["message"] == "2/2 replicas ready"


async def test_spec_update_patches_and_rolls_the_deployment(emulator, operator):
    await emulator.put(QSVC, qsvc())
    before = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"maxModelLen": 32768}, "replicas": 3}})
    after = await eventually(
        lambda: (d := emulator.get(DEPLOY, NS, "qwen")) and flag(d, "--max-model-len") == "32768" and d,
        what="the new flag",
    )
    assert after["spec"]["replicas"] == 3
    old_hash = before["spec"]["template"]["metadata"]["annotations"][HASH]
    new_hash = after["spec"]["template"]["metadata"]["annotations"][HASH]
    assert new_hash != old_hash, "the pod template hash must change so that pods roll"
    assert after["metadata"]["annotations"][HASH] == new_hash
    await eventually(lambda: events(emulator, "qwen", "Updated"), what="an Updated event")


async def test_removed_spec_fields_disappear_from_the_deployment(emulator, operator):
    await emulator.put(QSVC, qsvc(scheduling={"nodeSelector": {"gpu": "a100"}, "runtimeClassName": "nvidia"}))
    await eventually(
        lambda: (d := emulator.get(DEPLOY, NS, "qwen")) and d["spec"]["template"]["spec"].get("nodeSelector"),
        what="nodeSelector",
    )

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"scheduling": None}})
    dep = await eventually(
        lambda: (
            (d := emulator.get(DEPLOY, NS, "qwen"))
            and "nodeSelector" not in d["spec"]["template"]["spec"]
            and d
        ),
        what="no nodeSelector",
    )
    assert "runtimeClassName" not in dep["spec"]["template"]["spec"]


async def test_autoscaling_leaves_the_deployment_replicas_to_the_scaler(emulator, operator):
    body = qsvc(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5})
    await emulator.put(QSVC, body)
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    assert dep["spec"]["replicas"] == 1, "a new autoscaled Deployment starts at minReplicas"

    await emulator.patch(DEPLOY, NS, "qwen", {"spec": {"replicas": 4}})  # the scaler's decision
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"maxModelLen": 8192}, "replicas": 1}})
    dep = await eventually(
        lambda: (d := emulator.get(DEPLOY, NS, "qwen")) and flag(d, "--max-model-len") == "8192" and d,
        what="the new flag",
    )
    assert dep["spec"]["replicas"] == 4


async def made_invalid(emulator: Emulator, patch: dict[str, Any]) -> str:
    """Patch the service "qwen"; wait for phase Invalid, the InvalidSpec condition and its Event; give
    the condition's message."""
    await emulator.patch(QSVC, NS, "qwen", patch)
    got = await eventually(
        lambda: (s := emulator.get(QSVC, NS, "qwen")) and s.get("status", {}).get("phase") == "Invalid" and s,
        what="phase Invalid",
    )
    invalid = condition(got, "InvalidSpec")
    assert invalid is not None
    assert invalid["status"] == "True"
    await eventually(lambda: events(emulator, "qwen", "InvalidSpec"), what="an InvalidSpec event")
    return str(invalid["message"])


async def test_invalid_spec_is_reported_and_nothing_running_is_deleted(emulator, operator):
    await emulator.put(QSVC, qsvc())
    good = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")

    # A spec the CRD's CEL rules reject; here no admission runs, so the operator must catch it.
    message = await made_invalid(emulator, {"spec": {"engine": {"extraArgs": ["--port=9000"]}}})
    assert "--port=9000" in message
    assert "operator manages" in message

    dep = emulator.get(DEPLOY, NS, "qwen")
    assert dep is not None
    assert args_of(dep) == args_of(good), "the running Deployment is left as it was"
    assert emulator.get(SERVICE, NS, "qwen") is not None

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"extraArgs": ["--enable-prefix-caching"]}}})
    fixed = await eventually(
        lambda: (
            (s := emulator.get(QSVC, NS, "qwen")) and condition(s, "InvalidSpec")["status"] == "False" and s
        ),
        what="valid again",
    )
    assert fixed["status"]["phase"] != "Invalid"
    await eventually(
        lambda: "--enable-prefix-caching" in args_of(emulator.get(DEPLOY, NS, "qwen")),
        what="the fixed spec applied",
    )


async def test_drift_and_deletion_of_the_deployment_are_repaired(emulator, operator):
    await emulator.put(QSVC, qsvc())
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")

    hacked = dict(dep["spec"]["template"]["spec"]["containers"][0], image="evil/image:latest")
    await emulator.patch(DEPLOY, NS, "qwen", {"spec": {"template": {"spec": {"containers": [hacked]}}}})
    await eventually(
        lambda: (
            emulator.get(DEPLOY, NS, "qwen")["spec"]["template"]["spec"]["containers"][0]["image"]
            == "vllm/vllm-openai:v0.32.0"
        ),
        what="the image restored",
    )

    await emulator.remove(DEPLOY, NS, "qwen")
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment re-created")


async def test_objects_it_does_not_own_are_left_alone(emulator, operator):
    foreign = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "qwen", "namespace": NS, "labels": {"team": "other"}},
        "spec": {
            "replicas": 7,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}},
        },
    }
    await emulator.put(DEPLOY, foreign)
    await emulator.put(QSVC, qsvc())

    got = await eventually(
        lambda: (
            (s := emulator.get(QSVC, NS, "qwen")) and s.get("status", {}).get("phase") == "Degraded" and s
        ),
        what="phase Degraded",
    )
    degraded = condition(got, "Degraded")
    assert degraded["reason"] == "ResourceConflict"
    assert "not owned by this QwenService" in degraded["message"]
    dep = emulator.get(DEPLOY, NS, "qwen")
    assert dep["spec"]["replicas"] == 7
    assert dep["metadata"]["labels"] == {"team": "other"}
    assert len(emulator.history(DEPLOY, NS, "qwen")) == 1, "the foreign Deployment was never written"
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service (not in conflict)")


async def test_nothing_is_written_when_nothing_changed(emulator, operator):
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: (emulator.get(QSVC, NS, "qwen") or {}).get("status"), what="status")
    await asyncio.sleep(1)  # let every handler settle
    dep_versions = len(emulator.history(DEPLOY, NS, "qwen"))
    svc_versions = len(emulator.history(SERVICE, NS, "qwen"))
    status_before = emulator.get(QSVC, NS, "qwen")["status"]

    # A change that is not in the spec (a label) and a no-op Deployment event.
    await emulator.patch(QSVC, NS, "qwen", {"metadata": {"labels": {"team": "ml"}}})
    await emulator.patch(DEPLOY, NS, "qwen", {"metadata": {"annotations": {"unrelated": "x"}}})
    await asyncio.sleep(1.5)
    assert len(emulator.history(DEPLOY, NS, "qwen")) == dep_versions + 1  # only the test's own patch
    assert len(emulator.history(SERVICE, NS, "qwen")) == svc_versions
    assert emulator.get(QSVC, NS, "qwen")["status"] == status_before


async def test_kubectl_scale_through_the_scale_subresource(emulator, operator):
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")

    scale = await emulator.patch(
        QSVC, NS, "qwen", {"spec": {"replicas": 5}}, sub="scale"
    )  # kubectl scale --replicas=5
    assert scale["kind"] == "Scale"
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen")["spec"]["replicas"] == 5, what="5 replicas")


@pytest.fixture
def resync_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_OPERATOR_RESYNC_SECONDS", "1")  # read when the operator starts


async def test_the_periodic_resync_repairs_what_no_event_reports(resync_every_second, emulator, operator):
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service")
    await eventually(lambda: (emulator.get(QSVC, NS, "qwen") or {}).get("status"), what="status")
    await asyncio.sleep(1)  # let every handler settle

    # The operator does not watch Services: only the resync notices one deleted by hand.
    await emulator.remove(SERVICE, NS, "qwen")
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), within=5, what="the Service re-created")
    created = await eventually(
        lambda: [e for e in events(emulator, "qwen", "Created") if "Service qwen" in e["message"]][1:],
        what="a second Created event for the Service",
    )
    assert created[0]["source"]["component"] == "qwen-operator"

    # Resyncs of an unchanged service write nothing.
    await asyncio.sleep(0.5)
    writes = sum(emulator.writes.values())
    await asyncio.sleep(3)  # three resyncs
    assert sum(emulator.writes.values()) == writes, dict(emulator.writes)


def _deployment_validator(kind: str, obj: dict[str, Any]) -> list[str]:
    """An API server that checks Deployments against the upstream schema (kubernetes-validate)."""
    if kind != "Deployment":
        return []
    try:
        validate_k8s(obj)
    except Exception as exc:
        return [str(exc).splitlines()[0]]
    return []


async def test_what_the_api_server_refuses_becomes_invalid_spec_and_what_runs_keeps_running(
    emulator, operator
):
    """affinity is free-form in the CRD; a real API server refuses a malformed one with a 422. The
    operator reports it in the status (no endless handler retries) and leaves the running Deployment."""
    emulator.admission = _deployment_validator
    await emulator.put(QSVC, qsvc())
    good = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")

    bad = {"spec": {"scheduling": {"affinity": {"nodeAffinity": {"requiredDuringScheduling": "yes"}}}}}
    message = await made_invalid(emulator, bad)
    assert "the API server refused the Deployment qwen" in message
    assert "what already runs is unchanged" in message
    dep = emulator.get(DEPLOY, NS, "qwen")
    assert dep is not None
    assert dep["spec"]["template"] == good["spec"]["template"], "the running Deployment is left as it was"
    # kopf keeps a failed handler's retry schedule in an annotation; a refused spec leaves none.
    await asyncio.sleep(1)
    annotations = (emulator.get(QSVC, NS, "qwen") or {})["metadata"].get("annotations", {})
    pending = {k: v for k, v in annotations.items() if "delayed" in v or "retries" in v}
    assert not pending, f"the handler failed and kopf will retry it: {pending}"

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"scheduling": {"affinity": None}}})
    await eventually(
        lambda: condition(emulator.get(QSVC, NS, "qwen"), "InvalidSpec")["status"] == "False",
        what="valid again once the spec is fixed",
    )


async def test_host_path_and_root_are_refused_unless_the_admin_allows_them(emulator, operator):
    await emulator.put(
        QSVC, qsvc(model={"name": "q", "source": {"hostPath": {"path": "/"}}}, security={"runAsUser": 0})
    )
    got = await eventually(
        lambda: (s := emulator.get(QSVC, NS, "qwen")) and condition(s, "InvalidSpec") and s,
        what="the refusal in the status",
    )
    message = condition(got, "InvalidSpec")["message"]
    assert "QWEN_OPERATOR_ALLOW_HOST_PATH" in message
    assert "QWEN_OPERATOR_ALLOW_ROOT" in message
    await asyncio.sleep(1)
    assert emulator.get(DEPLOY, NS, "qwen") is None, "nothing was created for a refused spec"


async def test_network_policy_follows_the_spec_and_only_its_own_is_removed(emulator, operator):
    await emulator.put(
        QSVC, qsvc(networkPolicy={"enabled": True, "allowFrom": [{"podSelector": {"app": "web"}}]})
    )
    policy = await eventually(lambda: emulator.get(NETPOL, NS, "qwen"), what="the NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": labels.selector_labels("qwen")}
    (rule,) = policy["spec"]["ingress"]
    assert {"podSelector": {"matchLabels": {"app": "web"}}} in rule["from"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"networkPolicy": {"enabled": False}}})
    await eventually(lambda: emulator.get(NETPOL, NS, "qwen") is None, what="its NetworkPolicy removed")
    await eventually(lambda: events(emulator, "qwen", "Deleted"), what="a Deleted event")

    # A NetworkPolicy of the same name that someone else made is never touched.
    theirs = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "other", "namespace": NS},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    await emulator.put(NETPOL, theirs)
    await emulator.put(QSVC, qsvc("other"))
    await eventually(lambda: emulator.get(DEPLOY, NS, "other"), what="the other Deployment")
    await asyncio.sleep(1)
    assert emulator.get(NETPOL, NS, "other") is not None


async def test_the_disruption_budget_and_pod_hooks_reach_the_cluster(emulator, operator):
    """A new service gets a PodDisruptionBudget (one pod evicted at a time) and the pod labels,
    annotations, spread and rollout strategy it asks for; switched off, the budget goes."""
    await emulator.put(
        QSVC,
        qsvc(
            podMetadata={"annotations": {"karpenter.sh/do-not-disrupt": "true"}, "labels": {"team": "ml"}},
            scheduling={"topologySpreadConstraints": [{"topologyKey": "topology.kubernetes.io/zone"}]},
            rollout={"maxSurge": 0, "maxUnavailable": 1},
        ),
    )
    budget = await eventually(lambda: emulator.get(PDBS, NS, "qwen"), what="the PodDisruptionBudget")
    validate_k8s(budget)
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == {"matchLabels": labels.selector_labels("qwen")}
    dep = emulator.get(DEPLOY, NS, "qwen")
    assert dep is not None
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["spec"]["topologySpreadConstraints"][0]["labelSelector"] == {
        "matchLabels": labels.selector_labels("qwen")
    }
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"disruptionBudget": {"enabled": False}}})
    await eventually(lambda: emulator.get(PDBS, NS, "qwen") is None, what="its budget removed")


async def test_a_prefilled_model_cache_is_filled_by_a_job_before_pods_serve(emulator, operator):
    """cache.prefill: the operator creates the download Job with the Deployment, whose pods wait for it;
    ModelCached says Downloading, then Cached once the Job has succeeded and the pods come up."""
    source = {"hub": {"cache": {"claimName": "hf-cache", "prefill": True}}}
    await emulator.put(QSVC, qsvc(model={"name": "Qwen/Qwen2.5-7B-Instruct", "source": source}))
    job = await eventually(lambda: emulator.get(JOBS, NS, "qwen-download"), what="the download Job")
    validate_k8s(job)
    # The same reconcile applies the Deployment right after the Job: wait for it too.
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    (wait,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert wait["name"] == "wait-for-model-cache"
    downloading = await eventually(
        lambda: condition(emulator.get(QSVC, NS, "qwen"), "ModelCached"), what="ModelCached"
    )
    assert (downloading["status"], downloading["reason"]) == ("False", "Downloading")

    # The Job finishes; the init containers let the pods start; the Deployment reports them ready.
    await emulator.patch(JOBS, NS, "qwen-download", {"status": {"succeeded": 1}}, sub="status")
    await play_deployment_controller(emulator, "qwen", ready=2)
    cached = await eventually(
        lambda: (
            (c := condition(emulator.get(QSVC, NS, "qwen"), "ModelCached")) and c["status"] == "True" and c
        ),
        what="ModelCached True",
    )
    assert cached["reason"] == "Cached"
    assert "hf-cache" in cached["message"]


async def test_the_chat_page_is_deployed_shown_in_status_and_removed(emulator, operator):
    await emulator.put(QSVC, qsvc(chatUI={"enabled": True, "credentialsSecretRef": {"name": "chat-login"}}))
    chat = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen-chat"), what="the chat Deployment")
    page = await eventually(lambda: emulator.get(SERVICE, NS, "qwen-chat"), what="the chat Service")
    for obj in (chat, page):
        validate_k8s(obj)
    shown = await eventually(
        lambda: (emulator.get(QSVC, NS, "qwen") or {}).get("status", {}).get("chatUI"), what="status.chatUI"
    )
    assert shown == "http://qwen-chat.ml.svc"
    model = emulator.get(DEPLOY, NS, "qwen")
    assert model is not None
    assert model["spec"]["replicas"] == 2, "the model's Deployment is its own"

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"chatUI": {"enabled": False}}})
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen-chat") is None, what="the chat Deployment gone")
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen-chat") is None, what="the chat Service gone")
    assert emulator.get(DEPLOY, NS, "qwen") is not None


ROUTER_KINDS = {
    "v1/serviceaccounts": "qwen-router",
    "rbac.authorization.k8s.io/v1/roles": "qwen-router",
    "rbac.authorization.k8s.io/v1/rolebindings": "qwen-router",
    DEPLOY: "qwen-router",
    PDBS: "qwen-router",
    SERVICE: "qwen-engines",
}


async def test_the_router_takes_over_the_service_once_ready_and_leaves_no_trace(emulator, operator):
    """A serving service that turns routing on keeps its Service on the vLLM pods until a router pod
    is Ready, then clients reach the router at the same address; turned off, the Service selects the
    vLLM pods again and the router's objects are gone."""
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service")
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"routing": {"mode": "Builtin"}}})
    for kind, name in ROUTER_KINDS.items():
        made = await eventually(lambda k=kind, n=name: emulator.get(k, NS, n), what=f"{kind} {name}")
        validate_k8s(made)
    shown = await eventually(
        lambda: (emulator.get(QSVC, NS, "qwen") or {}).get("status", {}).get("routing"), what="status.routing"
    )
    assert shown == "Builtin"
    service = emulator.get(SERVICE, NS, "qwen")
    assert service is not None
    assert service["spec"]["selector"] == labels.selector_labels("qwen"), "switched to a router not ready"

    await play_deployment_controller(emulator, "qwen-router", ready=1)
    await eventually(
        lambda: (
            (emulator.get(SERVICE, NS, "qwen") or {}).get("spec", {}).get("selector")
            == labels.router_selector("qwen")
        ),
        what="the Service on the router",
    )

    await emulator.patch(QSVC, NS, "qwen", {"spec": {"routing": {"mode": "None"}}})
    for kind, name in ROUTER_KINDS.items():
        await eventually(lambda k=kind, n=name: emulator.get(k, NS, n) is None, what=f"{kind} {name} gone")
    service = emulator.get(SERVICE, NS, "qwen")
    assert service is not None
    assert service["spec"]["selector"] == labels.selector_labels("qwen")
    assert emulator.get(DEPLOY, NS, "qwen") is not None, "the model stays"


async def test_an_inference_pool_and_its_endpoint_picker_come_and_go_with_the_spec(emulator, operator):
    """routing.mode InferencePool through the real operator: the pool, the picker and the HTTPRoute to
    the named Gateway reach the API; the Service stays on the vLLM pods; mode None removes them."""
    made = {
        "inference.networking.k8s.io/v1/inferencepools": "qwen",
        "gateway.networking.k8s.io/v1/httproutes": "qwen",
        DEPLOY: "qwen-epp",
        SERVICE: "qwen-epp",
        "v1/configmaps": "qwen-epp",
        "rbac.authorization.k8s.io/v1/roles": "qwen-epp",
    }
    routing = {"mode": "InferencePool", "inferencePool": {"gatewayRef": {"name": "gw"}}}
    await emulator.put(QSVC, qsvc(routing=routing))
    for kind, name in made.items():
        await eventually(lambda k=kind, n=name: emulator.get(k, NS, n), what=f"{kind} {name}")
    service = await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service")
    assert service["spec"]["selector"] == labels.selector_labels("qwen")
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"routing": {"mode": "None"}}})
    for kind, name in made.items():
        await eventually(lambda k=kind, n=name: emulator.get(k, NS, n) is None, what=f"{kind} {name} gone")
    assert emulator.get(DEPLOY, NS, "qwen") is not None, "the model stays"
