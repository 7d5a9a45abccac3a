"""Leader election's rules (client-go's leaderelection package), on a fake API and fake clocks."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from qwen_operator import kube, leader
from qwen_operator.kube import LEASES

T0 = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


class FakeLeases:
    """One Lease store with resourceVersion preconditions, as the API server keeps them."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")

    async def get(self, res: Any, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        assert res == LEASES
        return copy.deepcopy(self.lease)

    async def create(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.rv += 1
        self.lease = {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        return copy.deepcopy(self.lease)

    async def merge_patch(
        self, res: Any, namespace: str, name: str, patch: dict[str, Any], sub: Any = None
    ) -> Any:
        self._check()
        assert self.lease is not None
        if patch["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.rv += 1
        self.lease["spec"] = {**self.lease["spec"], **patch["spec"]}
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def elector(
    api: FakeLeases, identity: str, clock: Clock, wall: datetime.datetime = T0
) -> leader.LeaderElector:
    return leader.LeaderElector(
        api, "ops", "qwen-operator", identity, leader.Timings(15, 10, 2), monotonic=clock, wall=lambda: wall
    )


async def test_the_first_candidate_creates_the_lease_and_renews_it_keeping_its_acquire_time() -> None:
    api, clock = FakeLeases(), Clock()
    a = elector(api, "a", clock)
    assert await a.try_acquire_or_renew()
    assert api.lease is not None
    first = dict(api.lease["spec"])
    assert first["holderIdentity"] == "a"
    assert first["leaseDurationSeconds"] == 15
    assert first["leaseTransitions"] == 0
    a.wall = lambda: T0 + datetime.timedelta(seconds=2)
    assert await a.try_acquire_or_renew()
    assert api.lease["spec"]["acquireTime"] == first["acquireTime"]
    assert api.lease["spec"]["renewTime"] == "2026-11-30T12:00:02.000000Z"


async def test_another_candidate_waits_a_lease_duration_on_its_own_clock_whatever_the_wall_clocks_say() -> (
    None
):
    api, clock = FakeLeases(), Clock()
    assert await elector(api, "a", clock).try_acquire_or_renew()
    # b's wall clock is an hour ahead: the holder's renewTime looks ancient to it, and must not matter.
    b = elector(api, "b", clock, wall=T0 + datetime.timedelta(hours=1))
    assert not await b.try_acquire_or_renew()
    clock.t += 14.9
    assert not await b.try_acquire_or_renew(), "taken before the lease duration passed"
    clock.t += 0.2
    assert await b.try_acquire_or_renew()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1


async def test_a_renewing_holder_keeps_the_lease() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert await a.try_acquire_or_renew()
    for _ in range(20):  # 40 s, far past the duration, with a renewal every 2 s
        clock.t += 2
        a.wall = lambda t=clock.t: T0 + datetime.timedelta(seconds=t)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()


async def test_of_two_candidates_writing_at_once_one_wins() -> None:
    api, clock = FakeLeases(), Clock()
    assert await elector(api, "a", clock).try_acquire_or_renew()
    b, c = elector(api, "b", clock), elector(api, "c", clock)
    assert not await b.try_acquire_or_renew()
    assert not await c.try_acquire_or_renew()
    clock.t += 16
    stale = copy.deepcopy(api.lease)
    assert await b.try_acquire_or_renew()

    async def get_stale(*_: Any) -> dict[str, Any] | None:
        return copy.deepcopy(stale)  # c read before b wrote

    c.cluster = type("Stale", (), {"get": staticmethod(get_stale), "merge_patch": api.merge_patch})()
    assert not await c.try_acquire_or_renew(), "the resourceVersion precondition refuses the second writer"
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "b"


async def test_a_leader_that_cannot_renew_gives_up_at_the_renew_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, clock = FakeLeases(), Clock()
    a = elector(api, "a", clock)
    assert await a.try_acquire_or_renew()
    api.down = True
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes only when the loop sleeps
        slept.append(seconds)
        clock.t += seconds

    monkeypatch.setattr(leader.asyncio, "sleep", sleep)
    await a.keep()
    assert 10 <= sum(slept) < 15, (
        f"gave up after {sum(slept)} s: after the renew deadline, before the lease ends"
    )


async def test_a_leader_that_sees_another_holder_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    api, clock = FakeLeases(), Clock()
    a = elector(api, "a", clock)
    assert await a.try_acquire_or_renew()
    assert api.lease is not None
    api.lease["spec"]["holderIdentity"] = "intruder"  # e.g. a Lease edited by hand

    async def sleep(seconds: float) -> None:
        clock.t += seconds

    monkeypatch.setattr(leader.asyncio, "sleep", sleep)
    await a.keep()
    assert clock.t == 102


async def test_release_hands_over_only_a_lease_still_ours() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert await a.try_acquire_or_renew()
    await a.release()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] is None
    assert api.lease["spec"]["leaseDurationSeconds"] == 1
    assert await b.try_acquire_or_renew(), "a released Lease is free at once"
    await a.release()
    assert api.lease["spec"]["holderIdentity"] == "b", "a stale leader never releases its successor's Lease"


def test_timings_that_would_let_two_leaders_act_are_refused() -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease"):
        leader.Timings(lease_seconds=10, renew_deadline_seconds=10, retry_seconds=2)


def test_timings_without_a_margin_for_a_write_in_flight_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 s longer than the renew deadline"):
        leader.Timings(lease_seconds=3, renew_deadline_seconds=2.5, retry_seconds=1)
    assert leader.Timings(lease_seconds=3, renew_deadline_seconds=2, retry_seconds=1)  # the chart's smallest


class SlowLeases(FakeLeases):
    """After ``slow_from`` (loop time), every call takes ``delay`` s and then fails: an API server that
    gets slow, then unreachable, for this replica."""

    def __init__(self, store: FakeLeases, slow_from: float, delay: float = 10.0) -> None:
        self.store, self.slow_from, self.delay = store, slow_from, delay

    async def _slow(self) -> None:
        if asyncio.get_running_loop().time() >= self.slow_from:
            await asyncio.sleep(self.delay)
            raise ApiException(status=503, reason="Service Unavailable")

    async def get(self, res: Any, namespace: str, name: str) -> dict[str, Any] | None:
        await self._slow()
        return await self.store.get(res, namespace, name)

    async def create(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        await self._slow()
        return await self.store.create(res, obj)

    async def merge_patch(
        self, res: Any, namespace: str, name: str, patch: dict[str, Any], sub: Any = None
    ) -> Any:
        await self._slow()
        return await self.store.merge_patch(res, namespace, name, patch, sub)


def loop_elector(api: Any, identity: str, timings: leader.Timings) -> leader.LeaderElector:
    loop = asyncio.get_running_loop()
    return leader.LeaderElector(api, "ops", "qwen-operator", identity, timings, monotonic=loop.time)


@pytest.mark.looptime
async def test_a_slow_then_unreachable_api_server_cannot_stretch_the_renew_deadline() -> None:
    """At the chart's smallest timings (lease 3 s, deadline 2 s, retry 1 s), the leader stops acting
    2 s after its last renewal began, however long each attempt takes to fail (it acted 4.9 s after,
    against a 3 s lease, before each attempt and wait were cut at the deadline)."""
    loop = asyncio.get_running_loop()
    timings = leader.Timings(lease_seconds=3, renew_deadline_seconds=2, retry_seconds=1)
    a = loop_elector(SlowLeases(FakeLeases(), slow_from=loop.time() + 0.5), "a", timings)
    began = loop.time()
    assert await a.try_acquire_or_renew()
    assert a.time_left() == pytest.approx(2)
    await a.keep()
    assert loop.time() - began == pytest.approx(2, abs=1e-3), "it acted past its renew deadline"
    assert a.time_left() == 0


class FakeApiClient:
    """What kube.Cluster needs of kubernetes_asyncio's ApiClient: records each call's method, time and
    timeout."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    async def call_api(self, path: str, method: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((method, asyncio.get_running_loop().time(), kwargs["_request_timeout"]))
        return {}


@pytest.mark.looptime
async def test_a_fenced_client_sends_no_write_once_the_deadline_has_passed() -> None:
    left = [5.0]
    client = FakeApiClient()
    cluster = kube.Cluster(client, fence=lambda: left[0])  # type: ignore[arg-type]
    await cluster.merge_patch(kube.DEPLOYMENTS, "ml", "q", {"spec": {"replicas": 2}})
    assert client.calls[-1][2] == 5.0, "a write is given no longer than the time left to lead"
    left[0] = 0.0
    with pytest.raises(kube.NotLeading):
        await cluster.merge_patch(kube.DEPLOYMENTS, "ml", "q", {"spec": {"replicas": 3}})
    with pytest.raises(kube.NotLeading):
        await cluster.create(kube.EVENTS, {"metadata": {"namespace": "ml", "name": "e"}})
    with pytest.raises(kube.NotLeading):
        await cluster.delete(kube.JOBS, "ml", "j", "uid")
    assert [m for m, _, _ in client.calls] == ["PATCH"]
    await cluster.get(kube.DEPLOYMENTS, "ml", "q")  # reads are not fenced
    assert [m for m, _, _ in client.calls] == ["PATCH", "GET"]


@pytest.mark.looptime
async def test_two_replicas_never_write_at_the_same_time() -> None:
    """Replica a leads and writes every 0.1 s through its fenced client. Its API server gets slow,
    then unreachable, for its Lease calls only (its other writes still land); b polls the Lease. Every
    write a made came before b's first, with the margin between renew deadline and lease to spare."""
    loop = asyncio.get_running_loop()
    timings = leader.Timings(lease_seconds=3, renew_deadline_seconds=2, retry_seconds=1)
    store = FakeLeases()
    a = loop_elector(SlowLeases(store, slow_from=loop.time() + 5), "a", timings)
    b = loop_elector(store, "b", timings)
    writes: dict[str, FakeApiClient] = {"a": FakeApiClient(), "b": FakeApiClient()}

    async def act(name: str, elector: leader.LeaderElector) -> None:
        cluster = kube.Cluster(writes[name], fence=elector.time_left)  # type: ignore[arg-type]
        while True:
            with contextlib.suppress(kube.NotLeading):
                await cluster.merge_patch(kube.DEPLOYMENTS, "ml", "q", {"spec": {"replicas": 1}})
            await asyncio.sleep(0.1)

    await a.acquire()
    acting = [asyncio.create_task(act("a", a)), asyncio.create_task(a.keep())]
    await b.acquire()
    acting.append(asyncio.create_task(act("b", b)))
    await asyncio.sleep(2)
    for task in acting:
        task.cancel()
    await asyncio.gather(*acting, return_exceptions=True)
    last_a = max(t for _, t, _ in writes["a"].calls)
    first_b = min(t for _, t, _ in writes["b"].calls)
    assert last_a < first_b, "two replicas wrote at the same time"
    assert first_b - last_a >= timings.lease_seconds - timings.renew_deadline_seconds - 0.11
