"""Two operator replicas elect a leader on a Lease: one acts, the other takes over when it goes.

Both replicas are the real operator (``runner.run``: the Lease, kopf, the scaler) in this event loop,
against the emulator; a crash is the leader's task cancelled, so it never releases its Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest

from qwen_operator import kube, runner
from qwen_operator.settings import OperatorSettings
from qwen_tools.emulator import DEPLOY, LEASES, Emulator
from tests.fakevllm import free_port
from tests.integration.conftest import OPERATOR_ENV, QSVC, OperatorThread, eventually
from tests.integration.test_autoscaling import PodPlayer, _playing, autoscaled, pod_port, replicas
from tests.integration.test_operator import NS, events

pytestmark = pytest.mark.integration
__all__ = ["pod_port"]  # a fixture

LEASE_NS = "qwen-operator"
LEASE_SECONDS = 3.0


class Replica(OperatorThread):
    """One operator replica (``runner.run``: the Lease, then kopf and the scaler), as a pod runs it."""

    def __init__(self, identity: str) -> None:
        super().__init__(self._replica, identity)
        self.identity = identity
        self.port = free_port("127.0.0.1")
        self.memo = kopf.Memo()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[int] | None = None

    async def _replica(self, stop: threading.Event, ready: threading.Event) -> int:
        config = OperatorSettings(
            leader_election_namespace=LEASE_NS,
            leader_election_identity=self.identity,
            leader_election_lease_seconds=LEASE_SECONDS,
            leader_election_renew_deadline_seconds=2,
            leader_election_retry_seconds=0.3,
            liveness_endpoint=f"http://127.0.0.1:{self.port}/healthz",
        )
        settings = kopf.OperatorSettings()
        settings.queueing.idle_timeout = 0.5
        stopping = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        watcher = asyncio.create_task(asyncio.to_thread(stop.wait))
        watcher.add_done_callback(lambda _: stopping.set())
        try:
            return await runner.run(
                config, [], stop_flag=stopping, ready_flag=ready, settings=settings, memo=self.memo
            )
        finally:
            stop.set()  # ends the watcher's thread
            await watcher

    def health(self) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as answer:
            return json.loads(answer.read() or b"null")

    async def crash(self) -> None:
        """Gone without a goodbye: the Lease is left to expire."""
        assert self.loop is not None
        assert self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        await self.join(20)

    async def exited(self, within: float) -> Any:
        await self.join(within)
        return self.result

    async def close(self) -> None:
        if self.thread.is_alive():
            await self.stop(30)


def holder(emulator: Emulator) -> str | None:
    lease = emulator.get(LEASES, LEASE_NS, "qwen-operator")
    return (lease or {}).get("spec", {}).get("holderIdentity")


@pytest.fixture
async def replicas_ab(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Replica]]:
    for key, value in OPERATOR_ENV.items():
        monkeypatch.setenv(key, value)
    pair = [Replica("replica-a"), Replica("replica-b")]
    try:
        yield pair
    finally:
        for replica in pair:
            await replica.close()
        granted = {(c.group, c.resource, verb) for c in kube.API_CALLS for verb in c.verbs}
        assert emulator.audit <= granted, f"calls the RBAC does not grant: {sorted(emulator.audit - granted)}"


@pytest.fixture
async def pods(emulator: Emulator, pod_port: int) -> AsyncIterator[PodPlayer]:
    async with _playing(PodPlayer(emulator, "qwen", pod_port)) as player:
        yield player


async def test_one_replica_leads_the_other_stands_by_and_takes_over_after_a_crash(
    emulator: Emulator, replicas_ab: list[Replica], pods: PodPlayer
) -> None:
    a, b = replicas_ab
    await a.start(10)
    b.thread.start()
    await eventually(lambda: holder(emulator) == "replica-a", what="replica-a holding the Lease")
    assert await asyncio.to_thread(lambda: _retry(b.health)) == {"leader": False}, "the standby is live"

    pods.total = 30  # 3.75 replicas' worth at 8 each
    await emulator.put(QSVC, autoscaled())
    await eventually(lambda: replicas(emulator) == 4, within=15, what="the leader's scale-up to 4")
    assert not b.ready.is_set(), "the standby runs no handler and no scaler"
    await eventually(
        lambda: len([p for p in pods.pods() if p.get("status", {}).get("phase") == "Running"]) == 4,
        what="4 ready pods",
    )
    await asyncio.sleep(1.5)  # the status of an evaluation at 4 ready pods is written

    loop = asyncio.get_running_loop()
    pods.total = 6  # one replica's worth: the leader's stabilization window (4 s) starts
    await asyncio.sleep(1)
    await a.crash()
    crashed = loop.time()
    await eventually(lambda: holder(emulator) == "replica-b", within=LEASE_SECONDS + 3, what="a takeover")
    assert loop.time() - crashed <= LEASE_SECONDS + 1.5, f"takeover after {loop.time() - crashed:.1f} s"
    assert await asyncio.to_thread(b.ready.wait, 10)

    await eventually(lambda: replicas(emulator) == 3, within=20, what="the new leader's first scale-down")
    # When the API server saw each change (the test's own polling lags when its loop is busy).
    led = emulator.first_change(LEASES, lambda lease: lease["spec"].get("holderIdentity") == "replica-b")
    down = emulator.first_change(
        DEPLOY, lambda dep: dep["metadata"]["name"] == "qwen" and dep["spec"]["replicas"] == 3
    )
    assert led is not None
    assert down is not None
    assert down - led >= 4, (
        f"the new leader scaled down {down - led:.1f} s after taking over, inside its 4 s window"
    )
    await eventually(lambda: replicas(emulator) == 1, within=20, what="the scale-down to minReplicas")
    await eventually(lambda: len(events(emulator, "qwen", "ScaledDown")) >= 3, what="3 ScaledDown events")
    ups = [e["message"] for e in events(emulator, "qwen", "ScaledUp")]
    downs = [e["message"].split(":")[0] for e in events(emulator, "qwen", "ScaledDown")]
    assert [m.split(":")[0] for m in ups] == ["1 -> 4"], ups
    assert downs == ["4 -> 3", "3 -> 2", "2 -> 1"], f"each step once, by one leader: {downs}"
    history = [d["spec"]["replicas"] for d in emulator.history(DEPLOY, NS, "qwen") if d]
    steps = [r for i, r in enumerate(history) if i == 0 or r != history[i - 1]]
    assert steps == [1, 4, 3, 2, 1], f"no double scaling: {steps}"


async def test_a_leader_that_stops_hands_over_without_waiting_out_the_lease(
    emulator: Emulator, replicas_ab: list[Replica]
) -> None:
    a, b = replicas_ab
    await a.start(10)
    b.thread.start()
    await eventually(lambda: holder(emulator) == "replica-a", what="replica-a holding the Lease")
    await a.close()  # SIGTERM in a rollout: kopf stops, then the Lease is released
    assert a.result == 0
    released = emulator.first_change(LEASES, lambda lease: not lease["spec"].get("holderIdentity"))
    await eventually(lambda: holder(emulator) == "replica-b", within=LEASE_SECONDS, what="a takeover")
    led = emulator.first_change(LEASES, lambda lease: lease["spec"].get("holderIdentity") == "replica-b")
    assert released is not None
    assert led is not None
    assert led - released < 1.5, f"the successor took {led - released:.1f} s, as if waiting out the lease"
    assert await asyncio.to_thread(b.ready.wait, 10)


async def test_a_leader_that_cannot_renew_stops_acting_before_another_may_lead(
    emulator: Emulator, replicas_ab: list[Replica], pods: PodPlayer
) -> None:
    a, b = replicas_ab
    await a.start(10)
    pods.total = 12
    await emulator.put(QSVC, autoscaled())
    await eventually(lambda: replicas(emulator) == 2, within=15, what="a scale-up to 2")

    # The API server refuses a's Lease writes (a partition between a and the API server, as a sees it).
    fault = emulator.inject("leases", {"patch"}, status=503)
    code = await a.exited(10)
    assert code == 1, "a leader that lost its Lease exits, to restart as a candidate"
    assert a.memo.scaler.done(), "its scaler stopped"
    emulator.faults.remove(fault)
    await b.start(LEASE_SECONDS + 5)
    assert holder(emulator) == "replica-b"
    pods.total = 20
    await eventually(lambda: replicas(emulator) == 3, within=15, what="the new leader scaling up")
    assert fault.hits >= 1


def _retry(call: Any, attempts: int = 20) -> Any:
    import time

    for _ in range(attempts - 1):
        with contextlib.suppress(OSError):
            return call()
        time.sleep(0.1)
    return call()
