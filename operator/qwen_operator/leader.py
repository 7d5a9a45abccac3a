"""Leader election on a ``coordination.k8s.io/v1`` Lease, so several operator replicas run and one acts.

The rules are client-go's ``leaderelection`` package's (read there, written here):

- A candidate reads the Lease. It takes it when the Lease does not exist, is released (no holder), or
  has not changed for ``leaseDurationSeconds`` *as measured by the candidate's own clock* since it
  last saw it change: the holder's ``renewTime`` is never compared with the local wall clock, so clock
  skew between nodes cannot hand the lease over early.
- Every write carries the ``resourceVersion`` it read, so of two candidates only one wins (409 for the
  other).
- The leader renews every ``retry`` seconds; when no renewal has succeeded for ``renew_deadline``
  seconds (less than the lease duration) it stops acting *before* any other candidate may take over.
  The deadline counts from the moment its last successful renewal *began* (the write landed after
  that, so a candidate saw it change after that too), every attempt and every wait is cut at the
  deadline (an API server that answers slowly cannot stretch it), and :meth:`LeaderElector.time_left`
  fences every write the operator makes: past the deadline, none is sent, and none is given longer
  than the time left to complete (``kube.Cluster``'s fence).
- A leader that stops on purpose releases the Lease (no holder, duration 1 s), so its successor need
  not wait out the lease; one that crashes leaves it to expire.

kopf-free: :class:`LeaderElector` works with any :class:`~qwen_operator.kube.ClusterAPI` and an
injected monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from qwen_operator.kube import LEASES, ClusterAPI, is_conflict

log = logging.getLogger(__name__)


# Between the renew deadline (the old leader's last write) and the lease's end (the new leader's first):
# a write the old leader sent just before its deadline, and clock rates that differ a little.
MIN_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class Timings:
    lease_seconds: float = 15.0  # how long a holder's claim lasts without renewal
    renew_deadline_seconds: float = 10.0  # a leader that could not renew for this long stops acting
    retry_seconds: float = 2.0  # how often a candidate tries, and a leader renews

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease duration, got "
                f"{self.retry_seconds} / {self.renew_deadline_seconds} / {self.lease_seconds}"
            )
        if self.lease_seconds - self.renew_deadline_seconds < MIN_MARGIN_SECONDS:
            raise ValueError(
                f"leader election needs the lease duration at least {MIN_MARGIN_SECONDS:g} s longer than the "
                "renew deadline (the margin for a write already in flight and for clocks that run at "
                f"slightly different rates), got {self.lease_seconds} / {self.renew_deadline_seconds}"
            )


def default_identity() -> str:
    """The host name (a pod's name) and a random suffix, so two processes on one host differ."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def micro_time(at: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(lease: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What identifies one claim on the Lease: a change in any of it means the holder is alive."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return tuple(
        spec.get(k)
        for k in ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
    )


def claim(
    lease: Mapping[str, Any] | None, identity: str, lease_seconds: float, now: datetime.datetime
) -> dict[str, Any]:
    """The Lease's ``spec`` once ``identity`` holds it (a renewal keeps the acquire time and count)."""
    spec = dict((lease or {}).get("spec") or {})
    ours = spec.get("holderIdentity") == identity
    transitions = int(spec.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(lease_seconds)),
        "acquireTime": spec.get("acquireTime") if ours and spec.get("acquireTime") else micro_time(now),
        "renewTime": micro_time(now),
        "leaseTransitions": transitions if ours or lease is None else transitions + 1,
    }


class LeaderElector:
    def __init__(
        self,
        cluster: ClusterAPI,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings = Timings(),
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.cluster, self.namespace, self.name, self.identity = cluster, namespace, name, identity
        self.timings, self.monotonic, self.wall = timings, monotonic, wall
        self._seen: tuple[Any, ...] | None = None  # the last claim read from the API
        self._seen_at = 0.0  # when (our monotonic clock) it last changed
        self._renewed_at: float | None = None  # when our last write as the holder succeeded

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def time_left(self) -> float:
        """Seconds this process may still act as the leader (0 once its renew deadline has passed, or
        before it ever held the Lease): the fence every write checks."""
        if self._renewed_at is None:
            return 0.0
        return max(0.0, self._renewed_at + self.timings.renew_deadline_seconds - self.monotonic())

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this process holds the Lease afterwards."""
        now = self.monotonic()
        lease = await self.cluster.get(LEASES, self.namespace, self.name)
        if lease is None:
            spec = claim(None, self.identity, self.timings.lease_seconds, self.wall())
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": spec,
            }
            try:
                await self.cluster.create(LEASES, body)
            except Exception as exc:
                if is_conflict(exc):  # another candidate created it first
                    return False
                raise
            self._held(spec, now)
            return True
        record = record_of(lease)
        if record != self._seen:
            self._seen, self._seen_at = record, now
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or self.timings.lease_seconds)
        if holder and holder != self.identity and now < self._seen_at + duration:
            return False  # held, and renewed within its duration as far as we have seen
        patch = {
            "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
            "spec": claim(lease, self.identity, self.timings.lease_seconds, self.wall()),
        }
        try:
            await self.cluster.merge_patch(LEASES, self.namespace, self.name, patch)
        except Exception as exc:
            if is_conflict(exc):  # another candidate wrote in between
                return False
            raise
        if holder != self.identity:
            log.info("%s: %s takes over from %s", self.where, self.identity, holder or "nobody")
        self._held(patch["spec"], now)
        return True

    def _held(self, spec: Mapping[str, Any], now: float) -> None:
        """Our write succeeded: what we wrote is the claim we last saw."""
        self._seen, self._seen_at, self._renewed_at = record_of({"spec": spec}), now, now

    async def _attempt(self, limit: float | None = None) -> bool:
        """One attempt, cut at ``limit`` seconds (a leader's time left) or twice the retry period."""
        timeout = (
            self.timings.retry_seconds * 2 if limit is None else min(limit, self.timings.retry_seconds * 2)
        )
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.warning("%s: no answer within %.1f s", self.where, timeout)
            return False
        except Exception as exc:  # the API server is away or busy: try again next period
            log.warning("%s: could not read or write it: %s", self.where, _short(exc))
            return False

    async def acquire(self) -> None:
        """Wait until this process holds the Lease."""
        log.info("%s: %s is a candidate", self.where, self.identity)
        while not await self._attempt():  # noqa: ASYNC110 (polling the API server is the protocol)
            await asyncio.sleep(self.timings.retry_seconds)
        log.info("%s: %s is the leader", self.where, self.identity)

    async def keep(self) -> None:
        """Renew the Lease while leading; return once leadership is lost (another holder, or no
        renewal within the renew deadline): the caller must stop acting at once. It returns at the
        deadline at the latest, however slowly the API server answers."""
        while True:
            left = self.time_left()
            if left > 0:
                await asyncio.sleep(min(self.timings.retry_seconds, left))
                left = self.time_left()
            if left <= 0:
                since = self.monotonic() - (self._renewed_at or 0.0)
                log.error(
                    "%s: not renewed for %.1f s (deadline %.1f s); %s stops",
                    self.where,
                    since,
                    self.timings.renew_deadline_seconds,
                    self.identity,
                )
                return
            if await self._attempt(left):
                continue
            if self._seen is not None and self._seen[0] not in (None, "", self.identity):
                log.error("%s: %s now holds it; %s stops", self.where, self._seen[0], self.identity)
                self._renewed_at = None  # the fence closes now
                return

    async def release(self) -> None:
        """Give the Lease up (only if still ours), so a successor takes over without waiting."""
        try:
            lease = await self.cluster.get(LEASES, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {
                "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                "spec": {
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": micro_time(self.wall()),
                },
            }
            await self.cluster.merge_patch(LEASES, self.namespace, self.name, patch)
            log.info("%s: %s released it", self.where, self.identity)
        except Exception as exc:  # it expires on its own
            log.warning("%s: could not release it: %s", self.where, _short(exc))


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status} {getattr(exc, 'reason', '')}".strip() if status else repr(exc)


@contextlib.asynccontextmanager
async def standby_health(endpoint: str | None) -> AsyncIterator[None]:
    """Answer the liveness endpoint while a replica waits for the Lease (kopf serves it only once it
    runs), so the kubelet keeps a healthy standby instead of restarting it."""
    if not endpoint:
        yield
        return
    from aiohttp import web

    parts = urlsplit(endpoint)

    async def healthy(_request: web.Request) -> web.Response:
        return web.json_response({"leader": False})

    app = web.Application()
    app.router.add_get(parts.path or "/", healthy)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()
