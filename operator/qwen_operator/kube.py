"""A small Kubernetes layer over kubernetes_asyncio: get, create, merge-patch, list (plain dicts).

Every call the operator makes to the API goes through :class:`Cluster`, whose methods are listed with
their verbs in :data:`API_CALLS` (the RBAC rules are checked against that list).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from qwen_operator import api


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


QWENSERVICES = Resource(api.GROUP, api.VERSION, api.PLURAL)
DEPLOYMENTS = Resource("apps", "v1", "deployments")
DAEMONSETS = Resource("apps", "v1", "daemonsets")
SERVICES = Resource("", "v1", "services")
PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
SECRETS = Resource("", "v1", "secrets")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets")
JOBS = Resource("batch", "v1", "jobs")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
CONFIGMAPS = Resource("", "v1", "configmaps")
INFERENCEPOOLS = Resource("inference.networking.k8s.io", "v1", "inferencepools")
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes")


@dataclass(frozen=True)
class ApiCall:
    """One kind of call the operator makes: what its RBAC must grant, and no more."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False  # granted cluster-wide even when the operator watches listed namespaces
    feature: str | None = None  # the chart value that grants it; without it, that feature is unavailable
    own_namespace: bool = False  # granted only in the operator's own namespace (a Role there)


# Every call the operator (and kopf under it) makes. The Helm chart's Roles/ClusterRoles are compared
# with this list by a test, and the integration tests check every call they see against it.
API_CALLS: tuple[ApiCall, ...] = (
    ApiCall(api.GROUP, api.PLURAL, ("get", "list", "watch", "patch"), "kopf watches them; reconcile reads"),
    ApiCall(api.GROUP, f"{api.PLURAL}/status", ("get", "patch"), "status, conditions, scaler state"),
    ApiCall(
        "apps",
        "deployments",
        ("get", "list", "watch", "create", "patch", "delete"),
        "the vLLM workload (watched), the chat page's and the router's; only those two are ever deleted "
        "(turned off)",
    ),
    ApiCall(
        "apps",
        "daemonsets",
        ("get", "list", "watch", "create", "patch", "delete"),
        "the image pre-pull (spec.engine.prePullImage; watched for its progress), deleted when turned off",
    ),
    ApiCall(
        "",
        "services",
        ("get", "create", "patch", "delete"),
        "the vLLM Service, the chat page's and, with the router, the engines'; only those two are ever "
        "deleted (turned off)",
    ),
    ApiCall("", "events", ("create",), "kopf's and the scaler's Events"),
    ApiCall(
        "",
        "serviceaccounts",
        ("get", "create", "patch", "delete"),
        "the router's (spec.routing.mode Builtin); deleted only when owned and the router is turned off",
    ),
    ApiCall(
        "rbac.authorization.k8s.io",
        "roles",
        ("get", "create", "patch", "delete"),
        "the router's Role (read its namespace's EndpointSlices); deleted only when owned and off",
    ),
    ApiCall(
        "rbac.authorization.k8s.io",
        "rolebindings",
        ("get", "create", "patch", "delete"),
        "binds the router's Role to its ServiceAccount; deleted only when owned and off",
    ),
    ApiCall(
        "discovery.k8s.io",
        "endpointslices",
        ("get", "list", "watch"),
        "never called by the operator: Kubernetes lets it grant the router's Role only what it holds",
    ),
    ApiCall(
        "",
        "configmaps",
        ("get", "create", "patch", "delete"),
        "the endpoint picker's plugins (spec.routing.mode InferencePool); deleted only when owned and off",
    ),
    ApiCall(
        "inference.networking.k8s.io",
        "inferencepools",
        ("get", "list", "watch", "create", "patch", "delete"),
        "the InferencePool (mode InferencePool); list and watch only so that the picker's Role may grant "
        "them",
    ),
    ApiCall(
        "inference.networking.x-k8s.io",
        "inferenceobjectives",
        ("get", "list", "watch"),
        "never called by the operator: the endpoint picker's Role grants them",
    ),
    ApiCall(
        "inference.networking.x-k8s.io",
        "inferencemodelrewrites",
        ("get", "list", "watch"),
        "never called by the operator: the endpoint picker's Role grants them",
    ),
    ApiCall(
        "gateway.networking.k8s.io",
        "httproutes",
        ("get", "create", "patch", "delete"),
        "the HTTPRoute from a Gateway to the InferencePool (inferencePool.gatewayRef); deleted only when "
        "owned",
    ),
    ApiCall(
        "networking.k8s.io",
        "networkpolicies",
        ("get", "create", "patch", "delete"),
        "the vLLM pods' NetworkPolicy (spec.networkPolicy); deleted only when owned and switched off",
    ),
    ApiCall(
        "policy",
        "poddisruptionbudgets",
        ("get", "create", "patch", "delete"),
        "the vLLM pods' PodDisruptionBudget (spec.disruptionBudget); deleted only when owned and off",
    ),
    ApiCall(
        "batch",
        "jobs",
        ("get", "create", "delete"),
        "the model download Job (spec.model.source.hub.cache.prefill); replaced for a new model, deleted "
        "only when owned",
    ),
    ApiCall(
        "",
        "pods",
        ("get", "list", "watch", "patch"),
        "the scaler's cache of ready pods to observe; pod-deletion-cost before a scale-down; get only so "
        "that the endpoint picker's Role may grant it",
    ),
    ApiCall(
        "",
        "secrets",
        ("get",),
        "only the Prometheus credentials a QwenService names (metrics.prometheus.*SecretRef)",
        feature="rbac.prometheusSecrets",
    ),
    ApiCall(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        "kopf notices the CRD being installed or removed",
        cluster_scoped=True,
    ),
    ApiCall(
        "coordination.k8s.io",
        "leases",
        ("get", "create", "patch"),
        "leader election between operator replicas (one Lease in the operator's namespace)",
        own_namespace=True,
    ),
)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ClusterAPI(Protocol):
    """What the controllers need of the API server (:class:`Cluster`, or a test's fake)."""

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def json_patch(
        self, res: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]: ...
    async def merge_patch(
        self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]: ...
    async def delete(self, res: Resource, namespace: str, name: str, uid: str) -> None: ...
    async def list(
        self, res: Resource, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]: ...


class NotLeading(Exception):
    """A write refused before it was sent: this replica's leadership has ended (or not begun)."""


WRITES = ("POST", "PATCH", "PUT", "DELETE")
REQUEST_TIMEOUT_SECONDS = 30.0


class Cluster:
    """Plain-dict CRUD against the API server. It deletes only what the reconcile created and owns.

    With a ``fence`` (the seconds this replica may still act as the leader), every write first asks
    it: none is sent at 0, and none is given longer than the time left to complete."""

    def __init__(self, client: ApiClient, fence: Callable[[], float] | None = None) -> None:
        self.client = client
        self.fence = fence

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        timeout = REQUEST_TIMEOUT_SECONDS
        if self.fence is not None and method in WRITES:
            left = self.fence()
            if left <= 0:
                raise NotLeading(f"{method} {path} not sent: this replica no longer leads")
            timeout = min(timeout, left)
        result = await self.client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _request_timeout=timeout,
        )
        return dict(result or {})

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", res.path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", res.path(obj["metadata"]["namespace"]), body=dict(obj))

    async def merge_patch(
        self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        return await self._call(
            "PATCH", res.path(namespace, name, sub), body=dict(patch), content_type=MERGE_PATCH
        )

    async def json_patch(
        self, res: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self._call("PATCH", res.path(namespace, name), body=ops, content_type=JSON_PATCH)

    async def delete(self, res: Resource, namespace: str, name: str, uid: str) -> None:
        """Delete one object, only if it is still the one with ``uid`` (a precondition, so a same-named
        object made since is never removed); gone already is fine."""
        # Background: a Job's pods go with it (the API's default for Jobs would orphan them).
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid},
            "propagationPolicy": "Background",
        }
        try:
            await self._call("DELETE", res.path(namespace, name), body=body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    async def list(
        self, res: Resource, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        result = await self._call("GET", res.path(namespace), query=query)
        return list(result.get("items", []) or [])

    async def close(self) -> None:
        await self.client.close()


async def list_watched(
    cluster: Any, res: Resource, namespaces: list[str], selector: str | None = None
) -> list[dict[str, Any]]:
    """``res`` in the namespaces the operator watches: one list call cluster-wide (no namespaces), else
    one per namespace."""
    if not namespaces:
        return list(await cluster.list(res, None, selector))
    found = await asyncio.gather(*(cluster.list(res, ns, selector) for ns in namespaces))
    return [obj for objs in found for obj in objs]


PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def _file(path: PathLike | None, data: str | bytes | None, suffix: str) -> str | None:
    """kubernetes_asyncio wants file paths for certificates; kopf may hold them as data instead."""
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    return temp_file(data, suffix)


def temp_file(data: str | bytes, suffix: str) -> str:
    """Write certificate data to a private temporary file (removed at exit); clients want paths."""
    fd, name = tempfile.mkstemp(prefix="qwen-operator-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    atexit.register(_remove, name)
    return name


def configuration(
    server: str,
    *,
    insecure: bool = False,
    ca_path: PathLike | None = None,
    ca_data: str | bytes | None = None,
    token: str | None = None,
    scheme: str | None = None,
    username: str | None = None,
    password: str | None = None,
    certificate_path: PathLike | None = None,
    certificate_data: str | bytes | None = None,
    private_key_path: PathLike | None = None,
    private_key_data: str | bytes | None = None,
) -> Configuration:
    """A kubernetes_asyncio configuration from the credentials kopf logged in with."""
    cfg = Configuration(host=server.rstrip("/"))
    cfg.verify_ssl = not insecure
    cfg.ssl_ca_cert = _file(ca_path, ca_data, ".crt")
    cfg.cert_file = _file(certificate_path, certificate_data, ".crt")
    cfg.key_file = _file(private_key_path, private_key_data, ".key")
    if token:
        cfg.api_key = {"BearerToken": f"{scheme or 'Bearer'} {token}"}
    if username and password:
        cfg.username, cfg.password = username, password
    return cfg


def refusal(exc: BaseException) -> str | None:
    """The API server's message when it refused an object as invalid (HTTP 400 or 422), else None."""
    if not isinstance(exc, ApiException) or exc.status not in (400, 422):
        return None
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or f"HTTP {exc.status}")


def is_forbidden(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 403


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 409


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 404


def summary(exc: BaseException) -> str:
    """One line on a failed API call, for a status message or a log line."""
    if isinstance(exc, ApiException):
        return f"the API server answered {exc.status} ({exc.reason or 'error'})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """The API server is busy or briefly unavailable (429, 5xx): the next attempt may succeed."""
    return isinstance(exc, ApiException) and (exc.status == 429 or (exc.status or 0) >= 500)
