"""Where each pod's cold start went, kept in status, and the startup probe's budget from it (pure).

The phases come from what the API records for a pod (its creation, its ``PodScheduled``, ``Initialized``
and ``Ready`` conditions, the engine container's start); :func:`fold` adds the pods that became ready
since the last look to ``status.startup`` (a pod once: by uid among the recent ones, and never one
older than those kept), so a restart of the operator counts nothing twice.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwen_operator import api
from qwen_operator.objects import parse_time

PHASES = ("node", "init", "image", "engine", "total")
KEPT = 20  # recent pods whose phases the status keeps (the p90 is over these)
# The engine's start-up budget: at least this many times the longest engine start measured lately, in
# steps (so that a change of the pod template, which rolls the pods, stays rare).
BUDGET_FACTOR = 3
BUDGET_STEPS = (900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400)


def phases(pod: Mapping[str, Any], container: str = "vllm") -> dict[str, float]:
    """Where a ready pod's cold start went, in seconds, from what the API records: ``node`` (created to
    scheduled: waiting for a node, a node autoscaler's provisioning included), ``init`` (scheduled to
    initialized: the init containers, the model cache among them), ``image`` (to the engine container's
    start: pulling the image, creating the container), ``engine`` (to Ready: loading the weights,
    compiling, the server up, the readiness probe), and ``total``. A phase whose ends are not both
    recorded is left out; none without a Ready condition."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Ready" not in conditions:
        return {}
    started = next(
        (
            ((s.get("state") or {}).get("running") or {}).get("startedAt")
            for s in status.get("containerStatuses") or []
            if s.get("name") == container
        ),
        None,
    )
    marks = [
        ("created", parse_time(meta.get("creationTimestamp"))),
        ("node", parse_time((conditions.get("PodScheduled") or {}).get("lastTransitionTime"))),
        ("init", parse_time((conditions.get("Initialized") or {}).get("lastTransitionTime"))),
        ("image", parse_time(started)),
        ("engine", _ready_at(pod)),
    ]
    out: dict[str, float] = {}
    for (_, begun), (phase, ended) in itertools.pairwise(marks):
        if begun is not None and ended is not None and ended >= begun:
            out[phase] = (ended - begun).total_seconds()
    created, ready = marks[0][1], marks[-1][1]
    if created is not None and ready is not None and ready > created:
        out["total"] = (ready - created).total_seconds()
    return out


def unschedulable(pod: Mapping[str, Any]) -> bool:
    """Whether the scheduler found no node for the pod (yet): it waits for one (a node autoscaler's)."""
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _ready_at(pod: Mapping[str, Any]) -> datetime.datetime | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def _p90(values: Sequence[float]) -> float | None:
    """The nearest-rank 90th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]


def _summary(samples: Sequence[api.StartupPhases]) -> api.StartupPhases:
    return api.StartupPhases(
        **{p: _p90([v for s in samples if (v := getattr(s, p)) is not None]) for p in PHASES}
    )


def fold(
    previous: api.StartupStatus | None, pods: Sequence[Mapping[str, Any]]
) -> tuple[api.StartupStatus | None, list[api.StartupSample]]:
    """``previous`` with the ready pods not counted yet, and those pods' samples (for the metrics)."""
    recent = list(previous.recent) if previous is not None else []
    seen = {s.uid for s in recent}
    oldest = recent[0].ready_at if len(recent) >= KEPT else None
    new: list[api.StartupSample] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        uid, ready_at = str(meta.get("uid") or ""), _ready_at(pod)
        if not uid or uid in seen or ready_at is None or (oldest is not None and ready_at <= oldest):
            continue
        measured = phases(pod)
        if "engine" not in measured and "total" not in measured:
            continue
        new.append(
            api.StartupSample(
                pod=str(meta.get("name", ""))[:253],
                uid=uid[:64],
                ready_at=ready_at,
                **{p: round(v, 1) for p, v in measured.items()},
            )
        )
        seen.add(uid)
    if not new:
        return previous, []
    recent = sorted([*recent, *new], key=lambda s: s.ready_at)[-KEPT:]
    base = previous or api.StartupStatus()
    latest = recent[-1]
    return (
        base.model_copy(
            update={
                "pods": base.pods + len(new),
                "last": api.StartupPhases(**{p: getattr(latest, p) for p in PHASES}),
                "p90": _summary(recent),
                "recent": recent,
            }
        ),
        new,
    )


def probe_budget(spec: api.QwenServiceSpec, startup: api.StartupStatus | None) -> tuple[int, int | None]:
    """The seconds the startup probe gives the engine, and the raised budget to keep in status (None
    when it is the spec's). The spec's ``startupTimeoutSeconds`` unless a measured engine start took
    more than a third of it: then the next step above three times the longest one lately, kept (never
    lowered by itself, so a slow start that ages out of the recent pods rolls nothing) until the spec's
    budget changes."""
    base = spec.engine.startup_timeout_seconds
    if startup is None:
        return base, None
    kept = startup.startup_probe_seconds if startup.budget_base == base else None
    longest = max((s.engine for s in startup.recent if s.engine is not None), default=0.0)
    want = BUDGET_FACTOR * longest
    raised = kept
    if want > max(base, kept or 0):
        raised = next((step for step in BUDGET_STEPS if step >= want), BUDGET_STEPS[-1])
    if raised is None or raised <= base:
        return base, None
    return raised, raised


def with_budget(spec: api.QwenServiceSpec, startup: api.StartupStatus | None) -> api.StartupStatus | None:
    """``startup`` with the probe budget it calls for recorded (and the spec budget it was raised from)."""
    if startup is None:
        return None
    _, raised = probe_budget(spec, startup)
    return startup.model_copy(
        update={
            "startup_probe_seconds": raised,
            "budget_base": None if raised is None else spec.engine.startup_timeout_seconds,
        }
    )


# ------------------------------------------------------------------ starts that fail, and what they say
# The engine container keeps its log's tail as its termination message (terminationMessagePolicy
# FallbackToLogsOnError), so the operator reads why a start failed without reading logs.
NO_SPACE = "No space left on device"
COMPILE_CACHE_MARK = "torch_compile_cache"  # vLLM's directory for torch.compile's artefacts
CACHE_RESET_SECONDS = 3600  # a compile cache is started afresh at most once an hour


@dataclass(frozen=True)
class StartFailure:
    """A pod of the service that is not serving and whose engine failed (or that was evicted)."""

    pod: str
    reason: str  # the kubelet's: Error, OOMKilled, Evicted, ...
    exit_code: int | None
    restarts: int
    message: str  # the log tail the kubelet kept, or the eviction's message
    cache_dir: str | None  # the pod's VLLM_CACHE_ROOT


def start_failures(pods: Sequence[Mapping[str, Any]], container: str = "vllm") -> list[StartFailure]:
    """The pods that are not Ready and whose ``container`` last ended in failure, or that were evicted."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        if _ready_at(pod) is not None:
            continue
        spec_container: Mapping[str, Any] = next(
            (c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == container), {}
        )
        env = {e.get("name"): e.get("value") for e in spec_container.get("env") or []}
        cache_dir = None if env.get("VLLM_CACHE_ROOT") is None else str(env["VLLM_CACHE_ROOT"])
        name = str((pod.get("metadata") or {}).get("name", ""))
        if status.get("reason") == "Evicted":
            out.append(StartFailure(name, "Evicted", None, 0, str(status.get("message", "")), cache_dir))
            continue
        for c in status.get("containerStatuses") or []:
            ended = ((c.get("lastState") or {}).get("terminated") or {}) if c.get("name") == container else {}
            if ended and ended.get("exitCode") not in (None, 0):
                out.append(
                    StartFailure(
                        name,
                        str(ended.get("reason") or "Error"),
                        int(ended["exitCode"]),
                        int(c.get("restartCount", 0) or 0),
                        str(ended.get("message") or ""),
                        cache_dir,
                    )
                )
    return out


def cache_full(failures: Sequence[StartFailure]) -> StartFailure | None:
    """A start that failed for want of space (vLLM's log says so), or a pod evicted for its cache's
    emptyDir outgrowing its size limit."""
    return next(
        (
            f
            for f in failures
            if NO_SPACE in f.message or (f.reason == "Evicted" and "emptydir" in f.message.lower())
        ),
        None,
    )


def corrupt_compile_cache(failures: Sequence[StartFailure], cache_dir: str) -> StartFailure | None:
    """A start that failed in the compile cache the pods use now: its log's tail names that cache
    (a traceback through a half-written or corrupt entry). Not one that ran out of space."""
    return next(
        (
            f
            for f in failures
            if f.cache_dir == cache_dir
            and NO_SPACE not in f.message
            and (cache_dir in f.message or COMPILE_CACHE_MARK in f.message)
        ),
        None,
    )


def reset_compile_cache(
    startup: api.StartupStatus | None, now: datetime.datetime
) -> api.StartupStatus | None:
    """``startup`` with the compile cache's next generation (a new, empty directory), or None when it
    was started afresh less than CACHE_RESET_SECONDS ago."""
    base = startup or api.StartupStatus()
    last = base.compile_cache_reset_at
    if last is not None and (now - last).total_seconds() < CACHE_RESET_SECONDS:
        return None
    return base.model_copy(
        update={"compile_cache_generation": base.compile_cache_generation + 1, "compile_cache_reset_at": now}
    )
