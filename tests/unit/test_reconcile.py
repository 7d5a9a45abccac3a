"""The reconcile against a fake cluster (an adapter fake: unit level only)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from qwen_operator import labels, objects, reconcile, render
from qwen_operator.kube import DEPLOYMENTS, QWENSERVICES, SERVICES, Resource
from qwen_operator.validation import Policy, parse

NOW = "2026-11-21T12:00:00Z"


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((res.plural, namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def create(self, res: Resource, obj: Any) -> dict[str, Any]:
        self.writes.append(("create", res.plural))
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{res.plural}-{obj['metadata']['name']}")
        self.objects[(res.plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def json_patch(
        self, res: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        import jsonpatch

        self.writes.append(("patch", res.plural))
        key = (res.plural, namespace, name)
        self.objects[key] = jsonpatch.apply_patch(self.objects[key], ops)
        return copy.deepcopy(self.objects[key])

    async def merge_patch(
        self, res: Resource, namespace: str, name: str, patch: Any, sub: str | None = None
    ) -> Any:
        self.writes.append(("status" if sub else "merge", res.plural))
        return {}

    async def delete(self, res: Resource, namespace: str, name: str, uid: str | None = None) -> None:
        self.writes.append(("delete", res.plural))
        del self.objects[(res.plural, namespace, name)]

    async def list(self, res: Resource, namespace: str | None, selector: str | None = None) -> list[Any]:
        wanted = dict(s.split("=", 1) for s in selector.split(",")) if selector else {}
        return [
            copy.deepcopy(o)
            for (plural, ns, _), o in self.objects.items()
            if plural == res.plural
            and namespace in (None, ns)
            and wanted.items() <= (o["metadata"].get("labels") or {}).items()
        ]


async def test_first_reconcile_creates_all_then_a_second_writes_nothing(minimal):
    cluster = FakeCluster()
    out = await reconcile.reconcile(cluster, minimal, NOW)
    assert cluster.writes == [
        ("create", "deployments"),
        ("create", "services"),
        ("create", "poddisruptionbudgets"),  # on by default
        ("status", "qwenservices"),
    ]
    assert [e.reason for e in out.events] == ["Created", "Created", "Created"]

    cluster.writes.clear()
    again = dict(minimal, status=out.status)
    out2 = await reconcile.reconcile(cluster, again, NOW)
    assert cluster.writes == []
    assert out2.events == []


async def test_api_server_defaults_do_not_count_as_drift(minimal):
    cluster = FakeCluster()
    await reconcile.reconcile(cluster, minimal, NOW)
    dep = cluster.objects[("deployments", "ml", "qwen")]
    dep["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    dep["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    dep["metadata"]["labels"]["added-by-someone"] = "x"
    assert objects.patch_ops(render.render_deployment(parse(minimal)), dep) == []


def test_patch_ops_replace_changed_fields_only_and_keep_foreign_labels(minimal):
    desired = render.render_deployment(parse(minimal))
    actual = copy.deepcopy(desired)
    actual["spec"]["replicas"] = 9
    actual["metadata"]["labels"] = {"other": "x"}
    ops = objects.patch_ops(desired, actual)
    paths = [op["path"] for op in ops]
    assert "/spec/replicas" in paths
    assert "/spec/template" not in paths
    assert "/metadata/labels/app.kubernetes.io~1managed-by" in paths
    assert objects.patch_ops(desired, actual, skip_spec=("replicas",)) == [
        o for o in ops if o["path"] != "/spec/replicas"
    ]


def test_is_subset_requires_equal_list_lengths():
    assert objects.is_subset({"a": [1, 2]}, {"a": [1, 2], "b": 3})
    assert not objects.is_subset({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not objects.is_subset({"a": {"b": 1}}, {"a": {"b": 2}})


def test_owner_of_follows_owner_references_then_labels():
    owned = {
        "metadata": {
            "namespace": "ml",
            "ownerReferences": [
                {"apiVersion": "serving.qwenops.io/v1alpha1", "kind": "QwenService", "name": "q", "uid": "u"}
            ],
        }
    }
    labelled = {"metadata": {"namespace": "ml", "labels": {"serving.qwenops.io/service": "q2"}}}
    assert objects.owner_of(owned) == ("ml", "q")
    assert objects.owner_of(labelled) == ("ml", "q2")
    assert objects.owner_of({"metadata": {}}) is None


def test_resource_paths():
    assert DEPLOYMENTS.path("ml", "q") == "/apis/apps/v1/namespaces/ml/deployments/q"
    assert SERVICES.path("ml") == "/api/v1/namespaces/ml/services"
    assert (
        QWENSERVICES.path("ml", "q", "status")
        == "/apis/serving.qwenops.io/v1alpha1/namespaces/ml/qwenservices/q/status"
    )


async def test_status_write_sends_only_changed_fields_so_the_scalers_survive(minimal):
    """The reconcile may hold an older copy of the scaler's status fields; it must not write them back."""
    sent: list[Any] = []

    class Recording(FakeCluster):
        async def merge_patch(
            self, res: Resource, namespace: str, name: str, patch: Any, sub: str | None = None
        ):
            sent.append(patch)
            return {}

    body = copy.deepcopy(minimal)
    body["spec"]["autoscaling"] = {"enabled": True}
    scaler = {"reason": "AboveTarget", "state": {"recommendations": [{"since": NOW, "replicas": 3}]}}
    body["status"] = {"autoscaling": scaler, "lastScaleTime": NOW, "phase": "Pending"}
    await reconcile.reconcile(Recording(), body, NOW)
    (patch,) = sent
    assert "phase" in patch["status"]
    assert "conditions" in patch["status"]
    assert "autoscaling" not in patch["status"]
    assert "lastScaleTime" not in patch["status"]


class Refusing(FakeCluster):
    """An API server that answers one resource with an error (an adapter fake): 403 on any call, any
    other status on a create, with ``body`` as the Status it sends."""

    def __init__(self, plural: str, status: int, body: str = "") -> None:
        super().__init__()
        self.plural, self.status, self.body = plural, status, body

    def _refuse(self, res: Resource) -> None:
        if res.plural == self.plural:
            exc = ApiException(status=self.status, reason="Refused")
            exc.body = self.body
            raise exc

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        if self.status == 403:
            self._refuse(res)
        return await super().get(res, namespace, name)

    async def create(self, res: Resource, obj: Any) -> dict[str, Any]:
        self._refuse(res)
        return await super().create(res, obj)


async def test_a_refused_create_becomes_invalid_spec_with_the_api_server_s_message(minimal):
    message = 'Deployment.apps "qwen" is invalid: spec.template.spec.affinity: Invalid value'
    cluster = Refusing("deployments", 422, json.dumps({"kind": "Status", "message": message}))
    out = await reconcile.reconcile(cluster, minimal, NOW)  # no exception for kopf to retry
    assert out.status is not None
    assert out.status["phase"] == "Invalid"
    (cond,) = [c for c in out.status["conditions"] if c["type"] == "InvalidSpec"]
    assert cond["status"] == "True"
    assert message in cond["message"]
    assert [e.reason for e in out.events] == ["InvalidSpec"]


async def test_other_api_errors_still_raise_for_a_retry(minimal):
    with pytest.raises(ApiException):
        await reconcile.reconcile(Refusing("deployments", 500), minimal, NOW)


async def test_a_network_policy_the_rbac_forbids_is_a_problem_not_a_failure(minimal):
    asked = copy.deepcopy(minimal)
    asked["spec"]["networkPolicy"] = {"enabled": True}
    cluster = Refusing("networkpolicies", 403)
    out = await reconcile.reconcile(cluster, asked, NOW)
    assert out.status is not None
    assert ("create", "deployments") in cluster.writes, "the rest is still reconciled"
    assert out.status["phase"] == "Degraded"
    assert "NetworkPolicyForbidden" in [e.reason for e in out.events]
    quiet = await reconcile.reconcile(Refusing("networkpolicies", 403), minimal, NOW)
    assert "NetworkPolicyForbidden" not in [e.reason for e in quiet.events]


async def test_hostpath_is_refused_without_the_admin_s_policy(minimal):
    body = copy.deepcopy(minimal)
    body["spec"]["model"] = {"name": "q", "source": {"hostPath": {"path": "/models"}}}
    cluster = FakeCluster()
    out = await reconcile.reconcile(cluster, body, NOW)
    assert cluster.writes == [("status", "qwenservices")]
    assert "QWEN_OPERATOR_ALLOW_HOST_PATH" in out.events[0].message
    allowed = await reconcile.reconcile(FakeCluster(), body, NOW, Policy(allow_host_path=True))
    assert [e.reason for e in allowed.events] == ["Created", "Created", "Created"]


async def test_the_disruption_budget_follows_the_spec_and_only_its_own_is_removed(minimal):
    """On by default (one pod at a time); maxUnavailable changes are patched; switched off, the budget
    this service made is deleted, while one of the same name that someone else made is left alone."""
    cluster = FakeCluster()
    await reconcile.reconcile(cluster, minimal, NOW)
    budget = cluster.objects[("poddisruptionbudgets", "ml", "qwen")]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == labels.selector_labels("qwen")
    wider = copy.deepcopy(minimal)
    wider["spec"]["disruptionBudget"] = {"maxUnavailable": 2}
    out = await reconcile.reconcile(cluster, wider, NOW)
    assert cluster.objects[("poddisruptionbudgets", "ml", "qwen")]["spec"]["maxUnavailable"] == 2
    assert "Updated PodDisruptionBudget qwen: maxUnavailable" in [e.message for e in out.events]

    off = copy.deepcopy(minimal)
    off["spec"]["disruptionBudget"] = {"enabled": False}
    cluster.objects[("poddisruptionbudgets", "ml", "qwen")]["metadata"]["uid"] = "pdb-1"
    out = await reconcile.reconcile(cluster, off, NOW)
    assert ("poddisruptionbudgets", "ml", "qwen") not in cluster.objects
    assert "Deleted PodDisruptionBudget qwen (no longer in the spec)" in [e.message for e in out.events]

    theirs = FakeCluster()
    foreign = {"metadata": {"name": "qwen", "namespace": "ml", "uid": "x"}, "spec": {"minAvailable": 3}}
    theirs.objects[("poddisruptionbudgets", "ml", "qwen")] = foreign
    out = await reconcile.reconcile(theirs, minimal, NOW)
    assert theirs.objects[("poddisruptionbudgets", "ml", "qwen")] == foreign, "someone else's budget changed"
    assert "ResourceConflict" in [e.reason for e in out.events]
    await reconcile.reconcile(theirs, off, NOW)
    assert ("poddisruptionbudgets", "ml", "qwen") in theirs.objects, "deleted a budget it did not make"


async def test_a_disruption_budget_the_rbac_forbids_is_a_problem_not_a_failure(minimal):
    cluster = Refusing("poddisruptionbudgets", 403)
    out = await reconcile.reconcile(cluster, minimal, NOW)
    assert out.status is not None
    assert ("create", "deployments") in cluster.writes, "the rest is still reconciled"
    (event,) = [e for e in out.events if e.reason == "PodDisruptionBudgetForbidden"]
    assert "poddisruptionbudgets get/create/patch/delete" in event.message
    off = copy.deepcopy(minimal)
    off["spec"]["disruptionBudget"] = {"enabled": False}
    quiet = await reconcile.reconcile(Refusing("poddisruptionbudgets", 403), off, NOW)
    assert "PodDisruptionBudgetForbidden" not in [e.reason for e in quiet.events]


def _prefilled(minimal, revision: str | None = None):
    body = copy.deepcopy(minimal)
    body["spec"]["model"] = {
        "name": "Qwen/Qwen2.5-7B-Instruct",
        "source": {"hub": {"cache": {"claimName": "hf-cache", "prefill": True}}},
        **({"revision": revision} if revision else {}),
    }
    return body


def _cached(out) -> tuple[str, str]:
    (cond,) = [c for c in out.status["conditions"] if c["type"] == "ModelCached"]
    return cond["status"], cond["reason"]


async def test_a_prefilled_cache_is_filled_once_and_its_progress_shows(minimal):
    """The download Job is created with the Deployment; ModelCached follows its status (downloading,
    failed: Degraded with what to do, done); a new revision replaces the Job; prefill off removes it."""
    cluster = FakeCluster()
    body = _prefilled(minimal)
    out = await reconcile.reconcile(cluster, body, NOW)
    assert ("create", "jobs") in cluster.writes
    assert _cached(out) == ("False", "Downloading")
    key = ("jobs", "ml", "qwen-download")
    cluster.objects[key]["metadata"]["uid"] = "job-1"

    gave_up = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}
    cluster.objects[key]["status"] = {"failed": 7, "conditions": [gave_up]}
    out = await reconcile.reconcile(cluster, dict(body, status=out.status), NOW)
    assert _cached(out) == ("False", "DownloadFailed")
    assert out.status["phase"] == "Degraded"
    assert any(
        "kubectl logs job/qwen-download" in e.message for e in out.events if e.reason == "ModelDownloadFailed"
    )

    cluster.objects[key]["status"] = {"succeeded": 1}
    cluster.writes.clear()
    out = await reconcile.reconcile(cluster, dict(body, status=out.status), NOW)
    assert _cached(out) == ("True", "Cached")
    assert ("create", "jobs") not in cluster.writes, "a filled cache is not filled again"

    newer = _prefilled(minimal, revision="v2")
    out = await reconcile.reconcile(cluster, dict(newer, status=out.status), NOW)
    assert (
        cluster.writes[-3:-1] == [("delete", "jobs"), ("create", "jobs")]
        or ("delete", "jobs") in cluster.writes
    )
    assert _cached(out) == ("False", "Downloading"), "the new revision is downloading"
    assert cluster.objects[key]["metadata"]["annotations"][labels.CACHE_KEY_ANNOTATION] == render.cache_key(
        parse(newer).spec
    )

    cluster.objects[key]["metadata"]["uid"] = "job-2"
    out = await reconcile.reconcile(cluster, dict(minimal, status=out.status), NOW)
    assert key not in cluster.objects, "prefill off: its Job goes"
    assert "ModelCached" not in [c["type"] for c in out.status["conditions"]]


async def test_a_download_job_it_did_not_make_is_left_alone(minimal):
    cluster = FakeCluster()
    theirs = {"metadata": {"name": "qwen-download", "namespace": "ml", "uid": "x"}, "spec": {}}
    cluster.objects[("jobs", "ml", "qwen-download")] = theirs
    out = await reconcile.reconcile(cluster, _prefilled(minimal), NOW)
    assert cluster.objects[("jobs", "ml", "qwen-download")] == theirs
    assert "ResourceConflict" in [e.reason for e in out.events]
    assert ("create", "deployments") in cluster.writes, "the rest is reconciled"


async def test_the_chat_page_comes_and_goes_with_the_spec(minimal):
    cluster = FakeCluster()
    on = copy.deepcopy(minimal)
    on["spec"]["chatUI"] = {"enabled": True, "credentialsSecretRef": {"name": "chat-login"}}
    out = await reconcile.reconcile(cluster, on, NOW)
    assert ("deployments", "ml", "qwen-chat") in cluster.objects
    assert ("services", "ml", "qwen-chat") in cluster.objects
    assert out.status["chatUI"] == "http://qwen-chat.ml.svc"
    for key in (("deployments", "ml", "qwen-chat"), ("services", "ml", "qwen-chat")):
        cluster.objects[key]["metadata"]["uid"] = f"uid-{key[0]}"
    out = await reconcile.reconcile(cluster, dict(minimal, status=out.status), NOW)
    assert ("deployments", "ml", "qwen-chat") not in cluster.objects
    assert ("services", "ml", "qwen-chat") not in cluster.objects
    assert ("deployments", "ml", "qwen") in cluster.objects, "the model stays"
    assert "chatUI" not in out.status


def _routed(minimal, mode: str = "Builtin", status: Any = None) -> dict[str, Any]:
    body = copy.deepcopy(minimal)
    body["spec"]["routing"] = {"mode": mode}
    if status is not None:
        body["status"] = status
    return body


def _selects(cluster: FakeCluster, name: str = "qwen") -> dict[str, str]:
    return cluster.objects[("services", "ml", name)]["spec"]["selector"]


ROUTER_OBJECTS = [
    ("serviceaccounts", "ml", "qwen-router"),
    ("roles", "ml", "qwen-router"),
    ("rolebindings", "ml", "qwen-router"),
    ("deployments", "ml", "qwen-router"),
    ("poddisruptionbudgets", "ml", "qwen-router"),
    ("services", "ml", "qwen-engines"),
]


async def test_a_serving_service_moves_to_the_router_only_once_a_router_pod_is_ready(minimal):
    """Turning the router on for a service that serves: its objects are made, the Service keeps the
    vLLM pods until a router pod is Ready, then selects the router; turned off, the Service selects the
    vLLM pods again and everything made for the router goes, but an object of the same name that
    someone else made stays."""
    cluster = FakeCluster()
    out = await reconcile.reconcile(cluster, minimal, NOW)
    assert _selects(cluster) == labels.selector_labels("qwen")

    out = await reconcile.reconcile(cluster, _routed(minimal, status=out.status), NOW)
    for key in ROUTER_OBJECTS:
        assert key in cluster.objects, key
    assert _selects(cluster) == labels.selector_labels("qwen"), "switched before a router pod was ready"
    assert _selects(cluster, "qwen-engines") == labels.selector_labels("qwen")
    assert out.status["routing"] == "Builtin"

    cluster.objects[("deployments", "ml", "qwen-router")]["status"] = {"readyReplicas": 1}
    out = await reconcile.reconcile(cluster, _routed(minimal, status=out.status), NOW)
    assert _selects(cluster) == labels.router_selector("qwen")
    assert "Updated Service qwen: selector" in [e.message for e in out.events]
    cluster.objects[("deployments", "ml", "qwen-router")]["status"] = {"readyReplicas": 0}
    again = await reconcile.reconcile(cluster, _routed(minimal, status=out.status), NOW)
    assert _selects(cluster) == labels.router_selector("qwen"), "a router restart is no reason to go back"
    assert again.events == []

    out = await reconcile.reconcile(cluster, _routed(minimal, "None", status=out.status), NOW)
    assert _selects(cluster) == labels.selector_labels("qwen")
    for key in ROUTER_OBJECTS:
        assert key not in cluster.objects, key
    assert ("deployments", "ml", "qwen") in cluster.objects, "the model stays"
    assert "routing" not in out.status

    theirs = FakeCluster()
    foreign = {"metadata": {"name": "qwen-router", "namespace": "ml", "uid": "x"}}
    theirs.objects[("serviceaccounts", "ml", "qwen-router")] = foreign
    out = await reconcile.reconcile(theirs, _routed(minimal), NOW)
    assert "ResourceConflict" in [e.reason for e in out.events]
    await reconcile.reconcile(theirs, _routed(minimal, "None", status=out.status), NOW)
    assert theirs.objects[("serviceaccounts", "ml", "qwen-router")] == foreign, "touched what it did not make"


async def test_a_new_service_is_reached_through_the_router_from_the_start(minimal):
    cluster = FakeCluster()
    out = await reconcile.reconcile(cluster, _routed(minimal), NOW)
    assert _selects(cluster) == labels.router_selector("qwen")
    assert out.status["routing"] == "Builtin"
    assert out.status["endpoint"] == "http://qwen.ml.svc:8000/v1", "clients keep the same address"


async def test_a_router_that_never_comes_up_is_reported_and_clients_keep_the_vllm_pods(minimal):
    cluster = FakeCluster()
    out = await reconcile.reconcile(cluster, minimal, NOW)
    out = await reconcile.reconcile(cluster, _routed(minimal, status=out.status), NOW)
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    cluster.objects[("deployments", "ml", "qwen-router")]["status"] = {"conditions": [stuck]}
    out = await reconcile.reconcile(cluster, _routed(minimal, status=out.status), NOW)
    (event,) = [e for e in out.events if e.reason == "RouterUnavailable"]
    assert "clients still reach the vLLM pods directly" in event.message
    assert _selects(cluster) == labels.selector_labels("qwen")
    assert out.status["phase"] == "Degraded"


async def test_a_router_the_rbac_forbids_is_a_problem_and_clients_keep_the_vllm_pods(minimal):
    cluster = Refusing("roles", 403)
    out = await reconcile.reconcile(cluster, _routed(minimal), NOW)
    (event,) = [e for e in out.events if e.reason == "RoutingForbidden"]
    assert "roles and rolebindings get/create/patch/delete" in event.message
    assert _selects(cluster) == labels.selector_labels("qwen")
    assert ("create", "deployments") in cluster.writes, "the model is still served"


POOL_OBJECTS = [
    ("serviceaccounts", "ml", "qwen-epp"),
    ("roles", "ml", "qwen-epp"),
    ("rolebindings", "ml", "qwen-epp"),
    ("configmaps", "ml", "qwen-epp"),
    ("deployments", "ml", "qwen-epp"),
    ("services", "ml", "qwen-epp"),
    ("inferencepools", "ml", "qwen"),
]


async def test_switching_between_routing_modes_leaves_only_what_the_new_one_needs(minimal):
    """InferencePool -> Builtin -> None: each switch makes the new mode's objects and removes the old
    one's; the Service stays on the vLLM pods with an InferencePool."""
    cluster = FakeCluster()
    out = await reconcile.reconcile(cluster, _routed(minimal, "InferencePool"), NOW)
    for key in POOL_OBJECTS:
        assert key in cluster.objects, key
    assert _selects(cluster) == labels.selector_labels("qwen")
    assert out.status["routing"] == "InferencePool"

    out = await reconcile.reconcile(cluster, _routed(minimal, "Builtin", status=out.status), NOW)
    for key in POOL_OBJECTS:
        assert key not in cluster.objects, key
    for key in ROUTER_OBJECTS:
        assert key in cluster.objects, key
    assert out.status["routing"] == "Builtin"

    out = await reconcile.reconcile(cluster, _routed(minimal, "None", status=out.status), NOW)
    assert {k for k in cluster.objects if k[2] != "qwen"} == set(), "something of a routing mode stayed"
    assert "routing" not in out.status


class NoInferenceApi(FakeCluster):
    """A cluster without the Gateway API Inference Extension's CRDs: 404 for inferencepools."""

    async def create(self, res: Resource, obj: Any) -> dict[str, Any]:
        if res.plural == "inferencepools":
            raise ApiException(status=404, reason="Not Found")
        return await super().create(res, obj)


async def test_a_cluster_without_the_inference_pool_crd_is_told_what_to_install(minimal):
    cluster = NoInferenceApi()
    out = await reconcile.reconcile(cluster, _routed(minimal, "InferencePool"), NOW)
    (event,) = [e for e in out.events if e.reason == "InferencePoolUnavailable"]
    assert "inferencepools.inference.networking.k8s.io" in event.message
    assert ("deployments", "ml", "qwen") in cluster.objects, "the model is still served"
    assert out.status["phase"] == "Degraded"


async def test_a_gateway_ref_removed_takes_its_route_along(minimal):
    cluster = FakeCluster()
    body = _routed(minimal, "InferencePool")
    body["spec"]["routing"]["inferencePool"] = {"gatewayRef": {"name": "gw"}}
    out = await reconcile.reconcile(cluster, body, NOW)
    assert ("httproutes", "ml", "qwen") in cluster.objects
    out = await reconcile.reconcile(cluster, _routed(minimal, "InferencePool", status=out.status), NOW)
    assert ("httproutes", "ml", "qwen") not in cluster.objects
    assert ("inferencepools", "ml", "qwen") in cluster.objects, "the pool stays"


async def test_turning_off_a_mode_the_rbac_never_allowed_does_not_fail(minimal):
    cluster = Refusing("roles", 403)
    out = await reconcile.reconcile(cluster, _routed(minimal), NOW)
    assert "RoutingForbidden" in [e.reason for e in out.events]
    off = await reconcile.reconcile(cluster, _routed(minimal, "None", status=out.status), NOW)
    assert off.status is not None
    assert "routing" not in off.status
