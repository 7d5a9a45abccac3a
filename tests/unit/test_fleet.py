"""The scaler's view of the fleet: watch-fed caches that list only to start and every relist period."""

from __future__ import annotations

from collections import Counter
from typing import Any

from qwen_operator.fleet import WatchedFleet
from qwen_operator.kube import Resource


def obj(name: str, rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


class Lister:
    """A fake API server that answers lists and counts them."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {"qwenservices": [], "deployments": [], "pods": []}
        self.lists: Counter[str] = Counter()

    async def list(
        self, res: Resource, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        self.lists[res.plural] += 1
        return list(self.objects[res.plural])


async def test_the_watch_keeps_the_caches_and_lists_happen_only_at_start_and_each_relist_period() -> None:
    api = Lister()
    api.objects["pods"] = [obj("a"), obj("gone-while-disconnected")]
    now = [0.0]
    fleet = WatchedFleet(api, [], relist_seconds=300, monotonic=lambda: now[0])  # type: ignore[arg-type]

    await fleet.services()  # a tick starts
    assert {p["metadata"]["name"] for p in await fleet.pods()} == {"a", "gone-while-disconnected"}
    assert api.lists == {"qwenservices": 1, "deployments": 1, "pods": 1}, "one list of each to start"

    fleet.apply("pods", "ADDED", obj("b"))
    fleet.apply("pods", "MODIFIED", obj("a", rv="2"))
    fleet.apply("pods", "DELETED", obj("b"))
    fleet.apply("pods", None, obj("c"))  # kopf's initial listing
    now[0] = 299.0
    await fleet.services()
    pods = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in await fleet.pods()}
    assert pods == {"a": "2", "gone-while-disconnected": "1", "c": "1"}
    assert sum(api.lists.values()) == 3, "no list between relists: the watch events are enough"

    api.objects["pods"] = [obj("a", rv="3"), obj("c")]  # a deletion the watch missed
    now[0] = 300.0
    await fleet.services()
    assert {p["metadata"]["name"] for p in await fleet.pods()} == {"a", "c"}
    assert api.lists == {"qwenservices": 2, "deployments": 2, "pods": 2}
