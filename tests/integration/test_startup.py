"""Cold starts on the emulator, with the real operator: each pod's phases in status.startup and in the
operator's metrics, and the image pre-pull DaemonSet reported as the DaemonSet controller moves it.

The emulator has no kubelet or controllers: the test writes what they would (the pod's conditions and
container start, the Deployment's ready count, the DaemonSet's status), as the e2e's node agent does
with real vLLM processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from qwen_operator import labels
from qwen_tools.emulator import DAEMONSETS, Emulator, now, pod_status
from tests.integration.conftest import DEPLOY, PODS, QSVC, eventually
from tests.integration.test_operator import NS, condition, qsvc

pytestmark = pytest.mark.integration


def startup_status(emulator: Emulator, name: str = "qwen") -> dict[str, Any]:
    return dict(((emulator.get(QSVC, NS, name) or {}).get("status") or {}).get("startup") or {})


async def test_a_pods_cold_start_is_measured_by_phase_once(emulator: Emulator, operator: Any) -> None:
    """A pod the operator's Deployment asked for is created, scheduled, started and, two seconds later,
    Ready (as the kubelet writes it); the Deployment's ready count changes. The service's status then
    shows the pod's phases, the operator exports them once, and a later reconcile adds nothing."""
    sample = {"namespace": NS, "name": "qwen", "phase": "engine"}

    def exported() -> float:
        return REGISTRY.get_sample_value("qwen_operator_pod_startup_seconds_count", sample) or 0.0

    before = exported()  # (the registry is the process's: other tests' services may share the names)
    await emulator.put(QSVC, qsvc(replicas=1))
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    pod = await emulator.put(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "qwen-a", "namespace": NS, "labels": labels.common_labels("qwen")},
            "spec": dep["spec"]["template"]["spec"],
            "status": pod_status(scheduled=now()),
        },
    )
    created = pod["metadata"]["creationTimestamp"]
    await asyncio.sleep(2.1)
    ready = pod_status(scheduled=created, started=created, ready=now())
    await emulator.patch(PODS, NS, "qwen-a", {"status": ready}, sub="status")
    counts = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}
    await emulator.patch(DEPLOY, NS, "qwen", {"status": counts}, sub="status")

    measured = await eventually(lambda: startup_status(emulator).get("pods"), what="status.startup")
    st = startup_status(emulator)
    assert measured == 1
    assert st["last"]["engine"] >= 2
    assert st["last"]["total"] >= 2
    assert st["last"]["node"] == 0
    assert [s["pod"] for s in st["recent"]] == ["qwen-a"]
    assert exported() == before + 1
    # Another change makes the reconcile run again: the same pod is not counted twice.
    await emulator.patch(DEPLOY, NS, "qwen", {"status": {**counts, "availableReplicas": 1}}, sub="status")
    await asyncio.sleep(1.5)
    assert startup_status(emulator)["pods"] == 1
    assert exported() == before + 1


async def test_the_image_pre_pull_reports_its_nodes_as_the_daemonset_moves(
    emulator: Emulator, operator: Any
) -> None:
    """engine.prePullImage: the operator creates the DaemonSet; each change of its status (the
    DaemonSet controller's) is seen through the watch and reported in ImagePrePulled; the service is
    never Degraded by it; turned off, the DaemonSet is deleted."""
    body = qsvc(replicas=1)
    body["spec"]["engine"]["prePullImage"] = True
    await emulator.put(QSVC, body)
    name = labels.prepull_name("qwen")
    ds = await eventually(lambda: emulator.get(DAEMONSETS, NS, name), what="the DaemonSet")
    dep = await eventually(lambda: emulator.get(DEPLOY, NS, "qwen"), what="the Deployment")
    serving = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ds["spec"]["template"]["spec"]["initContainers"][0]["image"] == serving
    await asyncio.sleep(1.5)  # the reconciles the creation itself caused are over
    for ready, reason, said in ((1, "Pulling", "1 of 3 node(s)"), (3, "Pulled", "the 3 node(s)")):
        status = {"desiredNumberScheduled": 3, "numberReady": ready, "observedGeneration": 1}
        await emulator.patch(DAEMONSETS, NS, name, {"status": status})

        def reported(reason: str = reason, said: str = said) -> bool:
            c = condition(emulator.get(QSVC, NS, "qwen"), "ImagePrePulled")
            return c is not None and c["reason"] == reason and said in c["message"]

        await eventually(reported, within=5, what=f"ImagePrePulled {reason}")
    c = condition(emulator.get(QSVC, NS, "qwen"), "ImagePrePulled")
    assert c is not None
    assert c["status"] == "True"
    assert (emulator.get(QSVC, NS, "qwen") or {})["status"]["phase"] != "Degraded"
    await emulator.patch(QSVC, NS, "qwen", {"spec": {"engine": {"prePullImage": False}}})
    await eventually(lambda: emulator.get(DAEMONSETS, NS, name) is None, what="the DaemonSet deleted")
