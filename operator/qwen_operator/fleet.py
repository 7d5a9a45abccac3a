"""What the scaler reads each tick: the QwenServices, their Deployments and their pods.

Two views with one interface. :class:`WatchedFleet` answers from caches the watch keeps (kopf's event
handlers feed them), so a tick costs no API call; like an informer, it lists again only to start and
then every ``relist_seconds``, which also drops an object whose deletion the watch missed while it
reconnected. :class:`ListedFleet` lists each time (tests, tools, and any caller without a watch).
Writes never rely on either: the scaler reads the objects it writes again, under the service's lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

from qwen_operator import labels
from qwen_operator.kube import DEPLOYMENTS, PODS, QWENSERVICES, ClusterAPI, Resource, list_watched
from qwen_operator.objects import key

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={labels.MANAGED_BY}"
KINDS: dict[str, tuple[Resource, str | None]] = {
    "services": (QWENSERVICES, None),
    "deployments": (DEPLOYMENTS, MANAGED_SELECTOR),
    "pods": (PODS, MANAGED_SELECTOR),
}


class Fleet(Protocol):
    async def services(self) -> Sequence[Mapping[str, Any]]: ...
    async def deployments(self) -> Sequence[Mapping[str, Any]]: ...
    async def pods(self) -> Sequence[Mapping[str, Any]]: ...


class ListedFleet:
    """Lists from the API server on every call."""

    def __init__(self, cluster: ClusterAPI, namespaces: list[str]) -> None:
        self.cluster, self.namespaces = cluster, namespaces

    async def _list(self, kind: str) -> list[dict[str, Any]]:
        res, selector = KINDS[kind]
        return await list_watched(self.cluster, res, self.namespaces, selector)

    async def services(self) -> Sequence[Mapping[str, Any]]:
        return await self._list("services")

    async def deployments(self) -> Sequence[Mapping[str, Any]]:
        return await self._list("deployments")

    async def pods(self) -> Sequence[Mapping[str, Any]]:
        return await self._list("pods")


class ObjectCache:
    """One kind of object, by (namespace, name), as the watch last reported it."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], Mapping[str, Any]] = {}

    def apply(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event: ``DELETED`` removes; anything else (``None`` for the initial listing, ``ADDED``,
        ``MODIFIED``) stores the body."""
        if event_type == "DELETED":
            self._objects.pop(key(body), None)
        else:
            self._objects[key(body)] = body

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        self._objects = {key(b): b for b in bodies}

    def values(self) -> list[Mapping[str, Any]]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)


class WatchedFleet:
    """Answers from watch-fed caches; lists only to start and every ``relist_seconds``."""

    def __init__(
        self,
        cluster: ClusterAPI | None,
        namespaces: list[str],
        relist_seconds: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # The operator makes its fleet before it logs in; the client comes with use().
        self.listed = ListedFleet(cast(ClusterAPI, cluster), namespaces)
        self.caches = {kind: ObjectCache() for kind in KINDS}
        self.relist_seconds = relist_seconds
        self._monotonic = monotonic
        self._listed_at: float | None = None

    def use(self, cluster: ClusterAPI) -> None:
        """After a re-login, list with the new client."""
        self.listed.cluster = cluster

    def apply(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event for ``kind`` (``services``, ``deployments`` or ``pods``)."""
        self.caches[kind].apply(event_type, body)

    async def services(self) -> Sequence[Mapping[str, Any]]:
        """The services; a tick starts here, so this is where the relist happens when it is due (all
        three kinds at once, so a service and its objects come from about the same moment)."""
        now = self._monotonic()
        if self._listed_at is None or now - self._listed_at >= self.relist_seconds:
            for name in KINDS:
                self.caches[name].replace(await self.listed._list(name))
            self._listed_at = now
        return self.caches["services"].values()

    async def deployments(self) -> Sequence[Mapping[str, Any]]:
        return self.caches["deployments"].values()

    async def pods(self) -> Sequence[Mapping[str, Any]]:
        return self.caches["pods"].values()
