"""kmock's Kubernetes emulator with the API-server behaviour kopf and the operator rely on.

Used by the integration tests and by ``make demo`` (kmock is in the ``sim`` and ``test`` extras).

kmock 0.8 stores objects and streams watch events, but (see docs/testing.md):
- never sets resourceVersion, uid, generation or creationTimestamp;
- watches ignore ``?resourceVersion=`` and replay stale objects, and subscribe after their snapshot
  (events in between are lost);
- a failed JSON-patch ``test`` op answers 500 instead of 422;
- ignores label selectors, the status and scale subresources, and ``generateName``.

This subclass adds those, over kmock's own object store (so ``emulator.objects[...]`` still works in
assertions). It still has no owner-reference garbage collection, no strategic-merge patches, no PUT,
no admission (schema, CEL) and no controllers: tests play the Deployment controller themselves.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import apps, enums, rendering
from kmock._internal.dicts import merge_patch_dict

from qwen_operator import crd

VERBS = {
    enums.action.LIST: "list",
    enums.action.WATCH: "watch",
    enums.action.FETCH: "get",
    enums.action.CREATE: "create",
    enums.action.UPDATE: "patch",
    enums.action.DELETE: "delete",
}

MUTATING = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)

# Resources whose status (and replicas) live behind subresources.
STATUS_SUBRESOURCE = {("apps", "deployments"), ("serving.qwenops.io", "qwenservices")}
SCALE_SUBRESOURCE = STATUS_SUBRESOURCE


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality- and existence-based label selectors (``a=b,c!=d,e,!f``)."""
    if not selector:
        return True
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define
class Fault:
    """An API server misbehaving for some calls: an HTTP error, a delay, or both (fault-injection
    tests). ``resource`` is a plural ("deployments"; with a subresource, "deployments/scale"), ``verbs``
    as RBAC names them; ``times`` limits how many calls it hits (None: until removed)."""

    resource: str
    verbs: frozenset[str]
    status: int | None = None
    delay: float = 0.0
    times: int | None = None
    hits: int = 0

    def matches(self, plural: str, verb: str) -> bool:
        return (
            plural == self.resource and verb in self.verbs and (self.times is None or self.hits < self.times)
        )


REASONS = {
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    # Every change ever made, as (resourceVersion, resource, watch event): watches resume from it.
    _log: list[tuple[int, Any, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _log_times: list[float] = attrs.field(factory=list, init=False)  # time.monotonic() of each change
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _results: dict[int, dict[str, Any]] = attrs.field(factory=dict, init=False)
    # What clients asked over HTTP, as RBAC sees it: (group, resource[/subresource], verb).
    audit: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)
    # Calls clients made over HTTP, per (group, resource[/subresource], verb).
    calls: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    # Writes (create, patch, update, delete) clients made over HTTP, per (group, resource[/sub]).
    writes: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter, init=False)
    # An API server's validation, if a test plugs one in: (kind, object) -> what it refuses (a 422).
    admission: Callable[[str, dict[str, Any]], list[str]] | None = attrs.field(default=None, init=False)
    # Injected faults (see Fault), tried in order; and a counter that ends every open watch stream.
    faults: list[Fault] = attrs.field(factory=list, init=False)
    # What RBAC refuses (group, resource, verb): answered 403 and kept in ``denied``, not in ``audit``.
    # install() refuses namespaces, as a cluster does where the operator has only its chart's RBAC.
    forbidden: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)
    denied: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    _watch_epoch: int = attrs.field(default=0, init=False)

    def inject(
        self,
        resource: str,
        verbs: str | set[str],
        *,
        status: int | None = None,
        delay: float = 0.0,
        times: int | None = None,
    ) -> Fault:
        """Make calls to ``resource`` with ``verbs`` fail with ``status`` and/or wait ``delay`` s."""
        fault = Fault(resource, frozenset({verbs} if isinstance(verbs, str) else verbs), status, delay, times)
        self.faults.append(fault)
        return fault

    async def drop_watches(self) -> None:
        """End every open watch stream now, as an API server restart or a load balancer does."""
        self._watch_epoch += 1
        await self._notify()

    async def _fault(self, request: rendering.Request) -> None:
        if not self.faults or (call := self._rbac_key(request)) is None:
            return
        _, plural, verb = call
        for fault in self.faults:
            if fault.matches(plural, verb):
                fault.hits += 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    raise kmock.KubernetesError(
                        fault.status, REASONS.get(fault.status, "InternalError"), f"injected {fault.status}"
                    )
                return

    def _admit(self, obj: dict[str, Any]) -> None:
        problems = self.admission(str(obj.get("kind", "")), obj) if self.admission else []
        if problems:
            what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r}"
            raise kmock.KubernetesError(422, "Invalid", f"{what} is invalid: {problems[0]}")

    # ------------------------------------------------------------------------------------ helpers
    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    @staticmethod
    def _has_sub(resource: Any, sub: set[tuple[str, str]]) -> bool:
        return (resource.group, resource.plural) in sub

    def _record(self, resource: Any, kind: str, raw: dict[str, Any]) -> None:
        self._log.append((self._last_rv, resource, {"type": kind, "object": copy.deepcopy(raw)}))
        self._log_times.append(time.monotonic())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _key(self, request: rendering.Request, name: str | None = None) -> Any:
        return (request.resource, request.namespace, name or request.name)

    def _live(self, key: Any) -> dict[str, Any] | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    # ---------------------------------------------------------------------------------- mutations
    async def _mutate(self, request: rendering.Request) -> dict[str, Any]:
        """Apply one create, patch or delete under the lock, then wake the watches."""
        mutator = {
            enums.action.CREATE: self._create,
            enums.action.UPDATE: self._update,
            enums.action.DELETE: self._delete,
        }[request.action]
        async with self._lock:
            result = mutator(request)
        await self._notify()
        return result

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse /api/v1/namespaces[/NAME] (it reads "namespaces" as the start of a
        # namespaced path): answer those here, 403 where RBAC refuses them, as a cluster does.
        parts = raw_request.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            verb = {"GET": "get" if len(parts) == 4 else "list"}.get(raw_request.method, "")
            if raw_request.query.get("watch") in ("true", "1"):
                verb = "watch"
            call = ("", "namespaces", verb)
            if call in self.forbidden or not verb:
                self.denied[call] += 1
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden"}
                message = (
                    f'namespaces is forbidden: cannot {verb or raw_request.method} resource "namespaces"'
                )
                return aiohttp.web.json_response({**status, "code": 403, "message": message}, status=403)
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock keeps every request for its DSL, and finds a request's reaction by scanning that list
        # through each reaction's filters (`request in payload._source`): a cost per request that grows
        # with the requests kept, quadratic in a long run (a demo) or a burst (1,000 services created
        # at once, hundreds in flight). We use no request assertions: before each dispatch, the list
        # holds this request only, and each reaction keeps none. Results are keyed by request object.
        if (call := self._rbac_key(request)) in self.forbidden:
            self.denied[call] += 1
            raise kmock.KubernetesError(403, "Forbidden", f"{call[2]} {call[1]} is forbidden")
        self._audit(request)
        await self._fault(request)
        if request.resource is not None and request.action in MUTATING:
            self._results[id(request)] = await self._mutate(request)
        self._requests[:] = [request]  # synchronous up to the reaction's first await
        for payload in self._payloads:
            payload._requests.clear()
        return await apps.RawHandler._handle(self, request)

    @staticmethod
    def _rbac_key(request: rendering.Request) -> tuple[str, str, str] | None:
        """(group, resource[/subresource], verb) as RBAC names the call, or None for non-resource calls."""
        if request.resource is None or not request.resource.plural or request.action is None:
            return None
        verb = VERBS[request.action]
        if request.action is enums.action.UPDATE and request.method == enums.method.PUT:
            verb = "update"
        plural = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        return request.resource.group or "", plural, verb

    def _audit(self, request: rendering.Request) -> None:
        if (call := self._rbac_key(request)) is None:
            return
        self.audit.add(call)
        self.calls[call] += 1
        if request.action in MUTATING:
            self.writes[call[0], call[1]] += 1

    def _create(self, request: rendering.Request) -> dict[str, Any]:
        obj = copy.deepcopy(request.data or {})
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        key = (request.resource, namespace, meta["name"])
        if self._live(key) is not None:
            raise kmock.KubernetesError(409, "AlreadyExists", f"{meta['name']} already exists")
        if self._has_sub(request.resource, STATUS_SUBRESOURCE):
            obj.pop("status", None)
        self._admit(obj)
        meta.update(
            uid=str(uuid.uuid4()), generation=1, creationTimestamp=now(), resourceVersion=self._next_rv()
        )
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        self._record(request.resource, "ADDED", obj)
        return obj

    def _update(self, request: rendering.Request) -> dict[str, Any]:
        key = self._key(request)
        old = self._live(key)
        if old is None:
            raise kmock.KubernetesNotFoundError(message=f"{request.name} not found")
        sub, patch = request.subresource, request.data
        if sub == "scale":
            patch = {"spec": {"replicas": (patch or {}).get("spec", {}).get("replicas")}}
        try:
            if isinstance(patch, list):
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            else:
                new = dict(merge_patch_dict(copy.deepcopy(old), patch or {}))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise kmock.KubernetesError(422, "Invalid", f"the patch cannot be applied: {exc}") from None
        want_rv = (
            (patch or {}).get("metadata", {}).get("resourceVersion") if isinstance(patch, dict) else None
        )
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise kmock.KubernetesError(409, "Conflict", "the object has been modified")
        if self._has_sub(request.resource, STATUS_SUBRESOURCE):
            # The status subresource writes only status; the main resource never writes status.
            new = (
                {**old, "status": new.get("status")}
                if sub == "status"
                else {**new, "status": old.get("status")}
            )
            if new.get("status") is None:
                new.pop("status", None)
        new["metadata"] = {
            **new["metadata"],
            "uid": old["metadata"]["uid"],
            "resourceVersion": old["metadata"]["resourceVersion"],
        }
        if new == old:
            return self._respond(request, old)  # a no-op patch changes nothing, not even resourceVersion
        self._admit(new)
        if _without(new, "metadata", "status") != _without(old, "metadata", "status"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._objects[key].delete()
            self._record(request.resource, "DELETED", new)
            return new
        self._objects[key].history.append(new)
        self._record(request.resource, "MODIFIED", new)
        return self._respond(request, new)

    def _delete(self, request: rendering.Request) -> dict[str, Any]:
        key = self._key(request)
        old = self._live(key)
        if old is None:
            raise kmock.KubernetesNotFoundError(message=f"{request.name} not found")
        options = request.data if isinstance(request.data, dict) else {}
        want_uid = (options.get("preconditions") or {}).get("uid")
        if want_uid and want_uid != old["metadata"].get("uid"):
            raise kmock.KubernetesError(409, "Conflict", f"precondition failed: UID {want_uid}")
        if old["metadata"].get("finalizers"):
            if not old["metadata"].get("deletionTimestamp"):
                old["metadata"].update(deletionTimestamp=now(), resourceVersion=self._next_rv())
                self._objects[key].history.append(old)
                self._record(request.resource, "MODIFIED", old)
            return old
        old["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].delete()
        self._record(request.resource, "DELETED", old)
        return old

    def _respond(self, request: rendering.Request, obj: dict[str, Any]) -> dict[str, Any]:
        return self._scale(obj) if request.subresource == "scale" else obj

    @staticmethod
    def _scale(obj: Mapping[str, Any]) -> dict[str, Any]:
        status = obj.get("status") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")},
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
            "status": {"replicas": status.get("replicas", 0), "selector": status.get("selector", "")},
        }

    async def _serve_create(self, request: rendering.Request) -> Any:
        return self._results.pop(id(request))

    async def _serve_update(self, request: rendering.Request) -> Any:
        return self._results.pop(id(request))

    async def _serve_delete(self, request: rendering.Request) -> Any:
        return self._results.pop(id(request))

    # ------------------------------------------------------------------------------------- reads
    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = request.params.get("labelSelector")
        out = []
        for (resource, namespace, _), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if not _selector_matches(selector, obj.raw.get("metadata", {}).get("labels") or {}):
                continue
            out.append(copy.deepcopy(obj.raw))
        return out

    def _event_matches(self, request: rendering.Request, resource: Any, event: Mapping[str, Any]) -> bool:
        meta = event["object"].get("metadata", {})
        return (
            resource == request.resource
            and (request.namespace is None or meta.get("namespace") == request.namespace)
            and (request.name is None or meta.get("name") == request.name)
            and _selector_matches(request.params.get("labelSelector"), meta.get("labels") or {})
        )

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._live(self._key(request))
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError()
        return self._respond(request, obj)

    async def _serve_list(self, request: rendering.Request) -> Any:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            return {"metadata": {"resourceVersion": str(self._last_rv)}, "items": self._matching(request)}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now: the stream has started even if nothing happens
        epoch = self._watch_epoch
        since = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        async with self._lock:
            if since and since.isdigit():
                position = next(
                    (i for i, (rv, _, _) in enumerate(self._log) if rv > int(since)), len(self._log)
                )
                backlog: list[dict[str, Any]] = []
            else:  # no resourceVersion: the current state first, then what follows it
                position = len(self._log)
                backlog = [{"type": "ADDED", "object": obj} for obj in self._matching(request)]
        for event in backlog:
            yield event
        while True:
            if self._watch_epoch != epoch:
                return  # dropped (drop_watches)
            while position < len(self._log):
                _, resource, event = self._log[position]
                position += 1
                if self._event_matches(request, resource, event):
                    yield event
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return
            async with self._changed:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(
                            lambda p=position: len(self._log) > p or self._watch_epoch != epoch
                        ),
                        timeout=remaining,
                    )
                except TimeoutError:
                    return

    # ------------------------------------------------------------------------ helpers for tests
    async def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object as a client would (with metadata and a watch event)."""
        namespace = obj.get("metadata", {}).get("namespace")
        return await self._mutate(self._request(enums.action.CREATE, resource, namespace, data=obj))

    async def patch(
        self, resource: str, namespace: str | None, name: str, patch: Any, sub: str | None = None
    ) -> dict[str, Any]:
        """Patch an object as a client would (a test playing a controller or a user)."""
        request = self._request(
            enums.action.UPDATE, resource, namespace, name=name, subresource=sub, data=patch
        )
        return await self._mutate(request)

    async def remove(self, resource: str, namespace: str | None, name: str) -> None:
        await self._mutate(self._request(enums.action.DELETE, resource, namespace, name=name))

    @staticmethod
    def _request(
        action: enums.action, resource: str, namespace: str | None, **fields: Any
    ) -> rendering.Request:
        methods = {enums.action.CREATE: "POST", enums.action.UPDATE: "PATCH", enums.action.DELETE: "DELETE"}
        return rendering.Request(
            method=enums.method(methods[action]),
            action=action,
            resource=kmock.resource(resource),
            namespace=namespace,
            **fields,
        )

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._live((kmock.resource(resource), namespace, name))

    def items(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        res = kmock.resource(resource)
        return [
            copy.deepcopy(obj.raw)
            for (r, ns, _), obj in self._objects.items()
            if r == res and not obj.deleted and (namespace is None or ns == namespace)
        ]

    def first_change(self, resource: str, match: Callable[[dict[str, Any]], bool]) -> float | None:
        """When (``time.monotonic()``) ``resource`` first changed into an object ``match`` accepts."""
        res = kmock.resource(resource)
        for (_, changed, event), at in zip(self._log, self._log_times, strict=True):
            if changed == res and match(event["object"]):
                return at
        return None

    def history(self, resource: str, namespace: str | None, name: str) -> list[dict[str, Any] | None]:
        key = (kmock.resource(resource), namespace, name)
        if key not in self._objects:
            return []
        return [None if v is None else v.raw for v in self._objects[key].history]


QSVC = "serving.qwenops.io/v1alpha1/qwenservices"
DEPLOY = "apps/v1/deployments"
DAEMONSETS = "apps/v1/daemonsets"
SERVICE = "v1/services"
EVENTS = "v1/events"
PODS = "v1/pods"
SECRETS = "v1/secrets"
NETWORKPOLICIES = "networking.k8s.io/v1/networkpolicies"
PDBS = "policy/v1/poddisruptionbudgets"
JOBS = "batch/v1/jobs"
LEASES = "coordination.k8s.io/v1/leases"
ENDPOINTSLICES = "discovery.k8s.io/v1/endpointslices"


def pod_status(
    scheduled: str, started: str | None = None, ready: str | None = None, container: str = "vllm"
) -> dict[str, Any]:
    """A pod's status as the scheduler and the kubelet write it (on a node that has the image, with no
    init containers): scheduled and initialized at ``scheduled``, the container running since
    ``started``, Ready at ``ready`` (RFC 3339 times). What the operator reads a cold start's phases from."""

    def condition(kind: str, status: bool, at: str) -> dict[str, str]:
        return {"type": kind, "status": "True" if status else "False", "lastTransitionTime": at}

    out: dict[str, Any] = {
        "phase": "Running" if started else "Pending",
        "conditions": [
            condition("PodScheduled", True, scheduled),
            condition("Initialized", True, scheduled),
            condition("ContainersReady", ready is not None, ready or scheduled),
            condition("Ready", ready is not None, ready or scheduled),
        ],
    }
    if started:
        state = {"running": {"startedAt": started}}
        running = {"name": container, "ready": ready is not None, "restartCount": 0, "started": True}
        out["containerStatuses"] = [{**running, "state": state}]
    return out


def declare(emulator: Emulator) -> None:
    """Discovery: what a cluster with our CRD installed serves."""
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    res = emulator.resources
    res[QSVC] = kmock.ResourceInfo(
        kind="QwenService",
        namespaced=True,
        verbs=verbs,
        shortnames={"qsvc"},
        subresources={"status", "scale"},
    )
    res[DEPLOY] = kmock.ResourceInfo(
        kind="Deployment", namespaced=True, verbs=verbs, subresources={"status", "scale"}
    )
    res[DAEMONSETS] = kmock.ResourceInfo(kind="DaemonSet", namespaced=True, verbs=verbs)
    res[SERVICE] = kmock.ResourceInfo(kind="Service", namespaced=True, verbs=verbs)
    res[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=verbs)
    res[EVENTS] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=verbs)
    res[SECRETS] = kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=verbs)
    res[NETWORKPOLICIES] = kmock.ResourceInfo(kind="NetworkPolicy", namespaced=True, verbs=verbs)
    res[PDBS] = kmock.ResourceInfo(kind="PodDisruptionBudget", namespaced=True, verbs=verbs)
    res[JOBS] = kmock.ResourceInfo(kind="Job", namespaced=True, verbs=verbs, subresources={"status"})
    res[LEASES] = kmock.ResourceInfo(kind="Lease", namespaced=True, verbs=verbs)
    res[ENDPOINTSLICES] = kmock.ResourceInfo(kind="EndpointSlice", namespaced=True, verbs=verbs)
    res["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"get", "list", "watch"}
    )
    res["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"get", "list", "watch"}
    )


def kubeconfig(url: str) -> dict[str, Any]:
    """A kubeconfig that points at the emulator (any token is accepted)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "emulated", "user": {"token": "emulated-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "emulated"}}],
    }


async def install(emulator: Emulator, url: str, path: Path) -> Path:
    """Make the emulator a cluster with our CRD installed, and write a kubeconfig for it at ``path``."""
    declare(emulator)
    emulator.forbidden |= {("", "namespaces", verb) for verb in ("get", "list", "watch")}
    await emulator.put("apiextensions.k8s.io/v1/customresourcedefinitions", crd.crd())
    await asyncio.to_thread(path.write_text, yaml.safe_dump(kubeconfig(url)))
    return path


async def start_operator(settings: Any, within: float) -> tuple[asyncio.Task[Any], asyncio.Event]:
    """The operator's real kopf handlers in this event loop (cluster-wide, standalone), once ready:
    its task, and the flag that stops it (kopf then ends the task cancelled)."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_operator(settings, stop, ready))
    await asyncio.wait_for(ready.wait(), within)
    return task, stop


async def run_operator(
    settings: Any, stop_flag: Any, ready_flag: Any, namespaces: list[str] | None = None
) -> None:
    """kopf with the operator's real handlers, standalone, cluster-wide or in ``namespaces`` (as
    QWEN_OPERATOR_NAMESPACES does), until ``stop_flag`` (an asyncio or threading Event) is set;
    ``ready_flag`` is set once it runs."""
    import kopf

    from qwen_operator import handlers  # noqa: F401  (registers the real handlers)

    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces or [],
        standalone=True,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        registry=kopf.get_default_registry(),
        settings=settings,
    )
