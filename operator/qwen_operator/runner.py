"""Run the operator: alone, or as one of several replicas that elect a leader on a Lease.

With leader election, a replica is a standby until it holds the Lease: it answers the liveness probe
and nothing else (no watch, no handler, no scaler). Once it leads, it runs kopf and our loops, renews
the Lease, and stops acting the moment it cannot renew (controller-runtime's rule: the process then
exits and restarts as a candidate). A leader that stops on purpose (SIGTERM, an upgrade) releases the
Lease so the next replica takes over at once; one that crashes leaves it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from qwen_operator import handlers, leader
from qwen_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


def _login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig to log in with")
    return info


async def run(
    config: OperatorSettings,
    namespaces: list[str],
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: Any = None,  # any flag kopf takes (an asyncio or threading Event)
    settings: kopf.OperatorSettings | None = None,
    memo: kopf.Memo | None = None,
) -> int:
    """Run until stopped: 0 after a stop, 1 after leadership was lost (restart as a candidate)."""
    settings = settings or kopf.OperatorSettings()
    memo = memo if memo is not None else kopf.Memo()
    options: dict[str, Any] = dict(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,  # kopf's own peering is not used: the Lease decides who runs at all
        liveness_endpoint=config.liveness_endpoint or None,
        registry=kopf.get_default_registry(),
        settings=settings,
        ready_flag=ready_flag,
        memo=memo,
    )
    if not config.leader_election_namespace:
        await kopf.operator(stop_flag=stop_flag, **options)
        return 0

    cluster = handlers.cluster_for(_login(settings))
    elector = leader.LeaderElector(
        cluster,
        config.leader_election_namespace,
        config.leader_election_lease_name,
        config.leader_election_identity or leader.default_identity(),
        config.election_timings(),
    )
    stopped = asyncio.create_task(stop_flag.wait() if stop_flag else asyncio.Event().wait())
    tasks: list[asyncio.Task[Any]] = [stopped]
    try:
        async with leader.standby_health(config.liveness_endpoint):
            acquiring = asyncio.create_task(elector.acquire())
            tasks.append(acquiring)
            await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped.done():
            return 0
        memo.fence = elector.time_left  # every write our client makes checks it (kube.Cluster)
        inner_stop = asyncio.Event()
        # The keeper first: kopf cancels, when it stops, every task created after it started.
        keeper = asyncio.create_task(elector.keep())
        operator = asyncio.create_task(kopf.operator(stop_flag=inner_stop, **options))
        tasks += [keeper, operator]
        await asyncio.wait({operator, keeper, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if keeper.done():  # leadership lost: stop scaling now, then the rest of kopf
            await handlers.stop_acting(memo)
            inner_stop.set()
            await _finish(operator)
            return 1
        # Stopping (a signal, or kopf ended): stop acting first, let kopf finish, keep renewing the
        # Lease until then, and only then hand it over.
        await handlers.stop_acting(memo)
        inner_stop.set()
        await _finish(operator)
        keeper.cancel()
        await elector.release()
        return 0
    finally:
        for task in tasks:  # the Lease first: once cancelled (a crash in a test), nothing acts on
            task.cancel()
        await handlers.stop_acting(memo)
        await asyncio.gather(*tasks, return_exceptions=True)
        await cluster.close()


async def _finish(operator: asyncio.Task[Any]) -> None:
    """Let kopf stop gracefully (it ends its task cancelled on a stop flag); cut it off after 30 s."""
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await asyncio.wait_for(asyncio.shield(operator), 30)
        except TimeoutError:
            log.warning("kopf did not stop within 30 s; cancelling it")
            operator.cancel()
            await asyncio.gather(operator, return_exceptions=True)
