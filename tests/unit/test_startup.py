"""Cold starts by phase: what a pod's timestamps say, status.startup, and the startup probe's budget."""

from __future__ import annotations

import copy
from typing import Any

from prometheus_client import REGISTRY

from qwen_operator import api, labels, reconcile, startup
from qwen_operator.kube import DAEMONSETS, DEPLOYMENTS, PODS
from qwen_operator.validation import parse
from tests.unit.test_reconcile import FakeCluster

NOW = "2026-12-07T12:00:00Z"


def started_pod(uid: str, minute: int = 0, engine: int = 70, service: str = "qwen") -> dict[str, Any]:
    """A pod created at 10:MM:00 that waited 95 s for a node, 40 s for its model cache, 12 s for its
    image, and ``engine`` s more until Ready."""

    def at(seconds: int) -> str:
        return f"2026-12-07T10:{minute + seconds // 60:02d}:{seconds % 60:02d}Z"

    return {
        "metadata": {
            "name": f"{service}-{uid}",
            "namespace": "ml",
            "uid": uid,
            "labels": labels.common_labels(service),
            "creationTimestamp": at(0),
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(95)},
                {"type": "Initialized", "status": "True", "lastTransitionTime": at(135)},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": at(147 + engine)},
                {"type": "Ready", "status": "True", "lastTransitionTime": at(147 + engine)},
            ],
            "containerStatuses": [{"name": "vllm", "state": {"running": {"startedAt": at(147)}}}],
        },
    }


def test_a_ready_pods_start_up_is_split_into_its_phases() -> None:
    p = started_pod("u1")
    assert startup.phases(p) == {"node": 95, "init": 40, "image": 12, "engine": 70, "total": 217}
    del p["status"]["containerStatuses"]
    assert startup.phases(p) == {"node": 95, "init": 40, "total": 217}, "a phase without both ends is out"
    p["status"]["conditions"][-1]["status"] = "False"
    assert startup.phases(p) == {}, "not ready: not started yet"


def test_each_pod_is_counted_once_even_across_restarts_and_the_p90_is_over_the_recent_ones() -> None:
    first, counted = startup.fold(None, [started_pod("a", 0, engine=60), started_pod("b", 1, engine=80)])
    assert first is not None
    assert [s.uid for s in counted] == ["a", "b"]
    assert (first.pods, first.last.engine, first.p90.engine, first.p90.node) == (2, 80, 80, 95)
    # The operator restarts: the status is all it has; the same pods are not counted again.
    again, counted = startup.fold(
        api.StartupStatus.model_validate(first.model_dump(mode="json", by_alias=True)),
        [started_pod("a", 0, engine=60), started_pod("b", 1, engine=80)],
    )
    assert counted == []
    assert again is not None
    assert again.pods == 2
    # Many more pods: the status keeps the last KEPT, and a pod older than those is not counted.
    many = [started_pod(f"p{i}", 2 + i, engine=100 + i) for i in range(startup.KEPT + 5)]
    full, counted = startup.fold(first, many)
    assert full is not None
    assert len(counted) == startup.KEPT + 5
    assert len(full.recent) == startup.KEPT
    assert full.pods == startup.KEPT + 7
    assert full.p90.engine == 100 + startup.KEPT + 2, "nearest rank over the kept 20: the 18th of them"
    late, counted = startup.fold(full, [started_pod("old", 1, engine=10)])
    assert counted == [], "older than every pod kept: counted before, or too old"
    assert late == full


def test_the_raised_budget_stays_until_the_spec_changes_its_own() -> None:
    svc = parse(
        {
            "metadata": {"name": "qwen", "namespace": "ml"},
            "spec": {"model": {"name": "q"}, "engine": {"startupTimeoutSeconds": 600}},
        }
    )
    slow, _ = startup.fold(None, [started_pod("slow", 0, engine=250)])
    slow = startup.with_budget(svc.spec, slow)
    assert slow is not None
    assert (slow.startup_probe_seconds, slow.budget_base) == (900, 600)
    # Twenty quick starts later the slow one has left the recent pods: the budget stays (no rollout).
    quick = [started_pod(f"q{i}", 5 + i, engine=30) for i in range(startup.KEPT)]
    later, _ = startup.fold(slow, quick)
    assert later is not None
    assert all(s.engine == 30 for s in later.recent)
    assert startup.probe_budget(svc.spec, startup.with_budget(svc.spec, later)) == (900, 900)
    # The user sets a budget of their own: it rules again.
    mine = svc.spec.model_copy(
        update={"engine": svc.spec.engine.model_copy(update={"startup_timeout_seconds": 1200})}
    )
    assert startup.probe_budget(mine, later) == (1200, None)


async def test_the_reconcile_keeps_startups_in_status_sizes_the_probe_and_exports_each_once(minimal) -> None:
    cluster = FakeCluster()
    pods = [started_pod("a", engine=700), started_pod("other", service="another")]
    labels_ = {"namespace": "ml", "name": "qwen", "phase": "engine"}

    def count() -> float:
        return REGISTRY.get_sample_value("qwen_operator_pod_startup_seconds_count", labels_) or 0.0

    before = count()
    out = await reconcile.reconcile(cluster, minimal, NOW, pods=pods)
    st = out.status["startup"]
    assert (st["pods"], st["last"]["engine"], st["p90"]["node"]) == (1, 700, 95), "its own pods only"
    assert st["startupProbeSeconds"] == 2700
    dep = cluster.objects[(DEPLOYMENTS.plural, "ml", "qwen")]
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 2700
    assert count() == before + 1
    again = await reconcile.reconcile(
        cluster, {**copy.deepcopy(minimal), "status": out.status}, NOW, pods=pods
    )
    assert again.status["startup"] == st
    assert count() == before + 1, "the same pod is not counted twice"


async def test_the_image_pre_pull_is_reported_and_never_degrades_the_service(minimal) -> None:
    cluster = FakeCluster()
    body = copy.deepcopy(minimal)
    body["spec"]["engine"] = {"prePullImage": True, "image": "r.io/vllm:typo"}

    def condition(out: Any) -> tuple[str, str, str]:
        c = next(c for c in out.status["conditions"] if c["type"] == "ImagePrePulled")
        return c["status"], c["reason"], c["message"]

    out = await reconcile.reconcile(cluster, body, NOW, pods=[])
    assert condition(out)[:2] == ("False", "Pulling")
    ds = cluster.objects[(DAEMONSETS.plural, "ml", "qwen-prepull")]
    ds["status"] = {"desiredNumberScheduled": 2, "numberReady": 1, "observedGeneration": 1}
    ds["metadata"]["generation"] = 1
    failing = {
        "metadata": {"name": "qwen-prepull-x1", "namespace": "ml", "labels": labels.prepull_labels("qwen")},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "pull",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
                }
            ]
        },
    }
    body["status"] = out.status
    out = await reconcile.reconcile(cluster, body, NOW, pods=[failing])
    state, reason, message = condition(out)
    assert (state, reason) == ("False", "PullFailed")
    assert "r.io/vllm:typo" in message
    assert "ImagePullBackOff" in message
    assert "qwen-prepull-x1" in message
    assert out.status["phase"] != "Degraded", "a pre-pull never holds serving back"
    # Without the watch's pods (the reconcile lists them itself), the pre-pull pod is listed too.
    cluster.objects[(PODS.plural, "ml", "qwen-prepull-x1")] = failing
    listed = await reconcile.reconcile(cluster, body, NOW)
    assert condition(listed)[:2] == ("False", "PullFailed")
    del cluster.objects[(PODS.plural, "ml", "qwen-prepull-x1")]
    ds["status"]["numberReady"] = 2
    body["status"] = out.status
    out = await reconcile.reconcile(cluster, body, NOW, pods=[])
    assert condition(out)[:2] == ("True", "Pulled")
    # Turned off: the DaemonSet goes, and so does the condition.
    body["spec"]["engine"] = {"image": "r.io/vllm:typo"}
    body["status"] = out.status
    out = await reconcile.reconcile(cluster, body, NOW, pods=[])
    assert (DAEMONSETS.plural, "ml", "qwen-prepull") not in cluster.objects
    assert all(c["type"] != "ImagePrePulled" for c in out.status["conditions"])


def failed_pod(uid: str, message: str, cache_dir: str, reason: str = "Error") -> dict[str, Any]:
    """A pod whose engine failed at start (three times) and keeps its log's tail as its termination
    message (terminationMessagePolicy FallbackToLogsOnError)."""
    p = started_pod(uid)
    p["spec"] = {"containers": [{"name": "vllm", "env": [{"name": "VLLM_CACHE_ROOT", "value": cache_dir}]}]}
    p["status"]["conditions"][-1]["status"] = "False"
    p["status"]["containerStatuses"][0] |= {
        "restartCount": 3,
        "lastState": {"terminated": {"exitCode": 1, "reason": reason, "message": message}},
    }
    return p


async def test_a_start_that_fails_in_the_compile_cache_gets_a_new_one_once_an_hour(minimal) -> None:
    """A traceback through the pods' compile cache (a half-written or corrupt entry): the pods get a
    new, empty directory (a Warning Event says why and what to do if they still fail); the same pods
    failing again with the old directory do not reset it twice; a failure elsewhere resets nothing."""
    cluster = FakeCluster()
    svc = parse(minimal)
    from qwen_operator import render

    first = render.compile_cache_dir(svc.spec)
    trace = (
        "Traceback (most recent call last):\n"
        f'  File "...", line 12, in load\nEOFError: Ran out of input: {first}/torch_compile_cache/ab/rank_0'
    )
    out = await reconcile.reconcile(cluster, minimal, NOW, pods=[failed_pod("a", trace, first)])
    assert out.status["startup"]["compileCacheGeneration"] == 1
    second = render.compile_cache_dir(svc.spec, 1)
    assert second != first
    env = cluster.objects[(DEPLOYMENTS.plural, "ml", "qwen")]["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert {"name": "VLLM_CACHE_ROOT", "value": second} in env
    (event,) = [e for e in out.events if e.reason == "CompileCacheReset"]
    assert event.type == "Warning"
    assert "EOFError" in event.message
    assert second in event.message
    # Old pods still failing on the old directory (even an hour on): nothing more.
    body = {**copy.deepcopy(minimal), "status": out.status}
    again = await reconcile.reconcile(
        cluster, body, "2026-12-07T13:30:00Z", pods=[failed_pod("a", trace, first)]
    )
    assert again.status["startup"]["compileCacheGeneration"] == 1
    assert not [e for e in again.events if e.reason == "CompileCacheReset"]
    # A new pod fails in the new one within the hour: not reset again (the cause may be elsewhere).
    trace2 = trace.replace(first, second)
    body = {**copy.deepcopy(minimal), "status": again.status}
    soon = await reconcile.reconcile(
        cluster, body, "2026-12-07T12:30:00Z", pods=[failed_pod("b", trace2, second)]
    )
    assert soon.status["startup"]["compileCacheGeneration"] == 1
    later = await reconcile.reconcile(
        cluster, body, "2026-12-07T13:01:00Z", pods=[failed_pod("b", trace2, second)]
    )
    assert later.status["startup"]["compileCacheGeneration"] == 2
    # A failure that does not name the cache (CUDA out of memory, say) resets nothing.
    oom = failed_pod("c", "torch.OutOfMemoryError: CUDA out of memory.", first)
    other = await reconcile.reconcile(FakeCluster(), minimal, NOW, pods=[oom])
    assert (other.status.get("startup") or {}).get("compileCacheGeneration", 0) == 0


async def test_a_full_cache_volume_is_a_clear_condition(minimal) -> None:
    svc = parse(minimal)
    from qwen_operator import render

    tail = "...\nOSError: [Errno 28] No space left on device: '/cache/vllm/x/torch_compile_cache/a'"
    full = failed_pod("a", tail, render.compile_cache_dir(svc.spec))
    out = await reconcile.reconcile(FakeCluster(), minimal, NOW, pods=[full])
    degraded = next(c for c in out.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CacheVolumeFull")
    assert "Errno 28" in degraded["message"]
    assert "sizeLimit" in degraded["message"]
    assert (out.status.get("startup") or {}).get("compileCacheGeneration", 0) == 0, "full is not corrupt"
    evicted = started_pod("e")
    evicted["status"] = {
        "phase": "Failed",
        "reason": "Evicted",
        "message": 'Usage of EmptyDir volume "cache" exceeds the limit "10Gi". ',
    }
    out = await reconcile.reconcile(FakeCluster(), minimal, NOW, pods=[evicted])
    degraded = next(c for c in out.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "CacheVolumeFull"
    assert "EmptyDir" in degraded["message"]


def test_the_scaler_sees_the_node_waits_of_ready_pods_and_the_pods_waiting_for_a_node_now() -> None:
    from qwen_operator.scaler.targets import candidates
    from tests.unit.test_scaler import deployment, service

    body = service("qwen")
    pending = {
        "metadata": {"name": "qwen-p", "namespace": "ml", "uid": "p", "labels": labels.common_labels("qwen")},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        },
    }
    other = copy.deepcopy(pending)
    other["metadata"] |= {"name": "x-p", "labels": labels.common_labels("x")}
    (found,) = candidates([(parse(body), body)], [deployment("qwen")], [started_pod("a"), pending, other])
    assert found.target.cold_starts == (217.0,)
    assert found.target.node_waits == (95.0,)
    assert found.target.waiting_for_node == 1, "its own pods only"
    obs = found.target.observation({})
    assert (obs.node_waits, obs.waiting_for_node) == ((95.0,), 1)
