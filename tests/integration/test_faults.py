"""Fault injection: the real kopf operator against an emulated API server that fails, stalls, drops
its watches, and has its objects edited or deleted under it. Each test asserts what a user would see:
the workload converges to the spec, nothing is written twice, the operator keeps running (the
``operator`` fixture fails a test whose operator crashed), and the status says what happened.

The operator killed in the middle of a scale-down window is in test_failover.py (the new leader waits
a full window of its own data).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qwen_tools.emulator import Emulator
from tests.integration.conftest import DEPLOY, QSVC, SERVICE, eventually
from tests.integration.test_operator import NS, condition, events, qsvc

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def resync_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The level-based resync is what repairs after a fault (kopf's own retry waits 15 s)."""
    monkeypatch.setenv("QWEN_OPERATOR_RESYNC_SECONDS", "1")


def image(emulator: Emulator, name: str = "qwen") -> str | None:
    dep = emulator.get(DEPLOY, NS, name)
    return dep["spec"]["template"]["spec"]["containers"][0]["image"] if dep else None


def creations(emulator: Emulator, kind: str, name: str = "qwen") -> list[str]:
    return [
        e["message"] for e in events(emulator, name, "Created") if e["message"].startswith(f"Created {kind}")
    ]


@pytest.mark.parametrize("status", [500, 409, 429])
async def test_failed_deployment_writes_are_retried_until_the_workload_matches_the_spec(
    emulator: Emulator, operator: Any, status: int
) -> None:
    create = emulator.inject("deployments", "create", status=status, times=2)
    await emulator.put(QSVC, qsvc())
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), within=10, what="the Deployment")
    assert create.hits == 2
    assert dep["spec"]["replicas"] == 2
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service")

    patch = emulator.inject("deployments", "patch", status=status, times=2)
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"image": "vllm/vllm-openai:v0.32.1"}}})
    await eventually(lambda: image(emulator) == "vllm/vllm-openai:v0.32.1", within=10, what="the new image")
    assert patch.hits == 2
    await eventually(
        lambda: (
            (s := emulator.get(QSVC, NS, "qwen")["status"]).get("observedGeneration") == 2
            and s["phase"] == "Progressing"
        ),
        what="the status of generation 2, Progressing (Degraded while the writes failed)",
    )
    assert len(creations(emulator, "Deployment")) == 1, "created once"
    # The handler posts its Events after the status write: wait for the update's, then count them.
    updates = await eventually(
        lambda: [
            e["message"]
            for e in events(emulator, "qwen", "Updated")
            if e["message"].startswith("Updated Deployment")
        ],
        what="the Deployment's Updated event",
    )
    assert len(updates) == 1, updates


async def test_a_slow_api_server_delays_one_service_not_the_others(emulator: Emulator, operator: Any) -> None:
    await emulator.put(QSVC, qsvc("slow"))
    await eventually(lambda: emulator.get(DEPLOY, NS, "slow"), what="the first Deployment")
    emulator.inject("deployments", "patch", delay=3)  # every Deployment patch takes 3 s
    await emulator.patch(QSVC, NS, "slow", {"spec": {"engine": {"image": "vllm/vllm-openai:v0.32.1"}}})
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await emulator.put(QSVC, qsvc("other"))
    await eventually(
        lambda: emulator.get(DEPLOY, NS, "other"), within=3, what="the other service's Deployment"
    )
    assert loop.time() - started < 2.5, "the other service waited for the slow one"
    await eventually(
        lambda: image(emulator, "slow") == "vllm/vllm-openai:v0.32.1", within=15, what="the slow update"
    )
    assert len(creations(emulator, "Deployment", "other")) == 1


async def test_dropped_and_refused_watches_lose_no_change(emulator: Emulator, operator: Any) -> None:
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    refused = emulator.inject("qwenservices", "watch", status=503)
    refused_deployments = emulator.inject("deployments", "watch", status=503)
    await emulator.drop_watches()
    # A user's change while no watch is open, and a Deployment edited by hand meanwhile.
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"replicas": 3}})
    await emulator.patch(DEPLOY, NS, "qwen", {"spec": {"replicas": 7}})
    await eventually(lambda: refused.hits >= 1, what="a refused watch")
    await eventually(
        lambda: emulator.get(DEPLOY, NS, "qwen")["spec"]["replicas"] == 3,
        within=10,
        what="replicas from the spec (the resync lists while the watches are down)",
    )
    emulator.faults.clear()  # the API server is back
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"image": "vllm/vllm-openai:v0.32.1"}}})
    await eventually(lambda: image(emulator) == "vllm/vllm-openai:v0.32.1", within=10, what="the new image")
    assert refused_deployments.hits >= 1
    assert len(creations(emulator, "Deployment")) == 1


async def test_hand_edits_and_deletions_are_repaired_and_reported(emulator: Emulator, operator: Any) -> None:
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(SERVICE, NS, "qwen"), what="the Service")
    await emulator.patch(DEPLOY, NS, "qwen", {"spec": {"replicas": 9}})  # kubectl scale deploy/qwen
    await eventually(
        lambda: emulator.get(DEPLOY, NS, "qwen")["spec"]["replicas"] == 2, what="2 replicas again"
    )
    service = emulator.get(SERVICE, NS, "qwen")
    await emulator.patch(SERVICE, NS, "qwen", {"spec": {"selector": {"app": "elsewhere"}}})
    await eventually(
        lambda: emulator.get(SERVICE, NS, "qwen")["spec"]["selector"] == service["spec"]["selector"],
        what="the Service's selector restored",
    )
    await emulator.remove(DEPLOY, NS, "qwen")
    await emulator.remove(SERVICE, NS, "qwen")
    await eventually(
        lambda: emulator.get(DEPLOY, NS, "qwen") and emulator.get(SERVICE, NS, "qwen"), what="both re-created"
    )
    # Each re-creation is reported (the event is posted just after the write it reports).
    await eventually(
        lambda: len(creations(emulator, "Deployment")) >= 2 and len(creations(emulator, "Service")) >= 2,
        what="the re-creations reported",
    )
    assert len(creations(emulator, "Deployment")) == 2
    assert len(creations(emulator, "Service")) == 2
    updated = [e["message"] for e in events(emulator, "qwen", "Updated")]
    assert any(m.startswith("Updated Deployment qwen: replicas") for m in updated), updated


async def test_a_qwenservice_deleted_mid_reconcile_leaves_the_operator_running_and_quiet(
    emulator: Emulator, operator: Any
) -> None:
    emulator.inject("deployments", "create", delay=1.5)  # the reconcile is inside its first write
    await emulator.put(QSVC, qsvc("gone"))
    await asyncio.sleep(0.5)
    await emulator.remove(QSVC, NS, "gone")
    await asyncio.sleep(3)  # the write lands, then resyncs run
    writes = sum(emulator.writes.values())
    await asyncio.sleep(2)
    assert sum(emulator.writes.values()) == writes, f"writes for a deleted service: {dict(emulator.writes)}"
    assert emulator.get(QSVC, NS, "gone") is None, "never re-created"
    # The operator still serves other services.
    await emulator.put(QSVC, qsvc("next"))
    await eventually(lambda: emulator.get(DEPLOY, NS, "next"), what="the next service's Deployment")


async def test_a_persistent_api_failure_is_reported_in_the_status(emulator: Emulator, operator: Any) -> None:
    await emulator.put(QSVC, qsvc())
    await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    emulator.inject("deployments", "patch", status=500)
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"image": "vllm/vllm-openai:v0.32.1"}}})
    got = await eventually(
        lambda: (c := condition(emulator.get(QSVC, NS, "qwen"), "Degraded")) and c["status"] == "True" and c,
        within=10,
        what="Degraded=True",
    )
    assert got["reason"] == "ApiError"
    assert got["message"].startswith("writing the Deployment qwen failed: the API server answered 500"), got[
        "message"
    ]
    emulator.faults.clear()
    await eventually(lambda: image(emulator) == "vllm/vllm-openai:v0.32.1", within=10, what="the new image")
    await eventually(
        lambda: (c := condition(emulator.get(QSVC, NS, "qwen"), "Degraded")) and c["status"] == "False",
        what="Degraded=False once it recovers",
    )
