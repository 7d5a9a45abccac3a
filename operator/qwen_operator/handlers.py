"""kopf handlers: they only wire the Kubernetes adapter to the reconcile and post what it reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
import prometheus_client
from kubernetes_asyncio.client import ApiClient

from qwen_operator import api, kube, labels, reconcile
from qwen_operator.clock import utcnow
from qwen_operator.fleet import MANAGED_SELECTOR, WatchedFleet
from qwen_operator.objects import owner_of, rfc3339
from qwen_operator.outcome import Outcome
from qwen_operator.scaler import Autoscaler
from qwen_operator.settings import OperatorSettings
from qwen_operator.writes import create_events

MANAGED = {"app.kubernetes.io/managed-by": labels.MANAGED_BY}
log = logging.getLogger(__name__)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations, so that our status stays a strict schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own events are posted explicitly
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # Managed Deployments and pods only, selected by the API server (not all of the cluster's pods).
    for plural in ("deployments", "pods"):
        settings.watching.label_selectors[plural] = MANAGED_SELECTOR
    memo.config = config = OperatorSettings()
    if config.namespaces:
        # Listed namespaces are used as they are. Scanning would first list all namespaces, which the
        # chart's RBAC does not grant: kopf retries that 403 for about a minute before it falls back to
        # the same list. (Without scanning, a CRD installed after the operator starts needs a restart;
        # the chart installs it first.)
        settings.scanning.disabled = True
    memo.locks = {}
    # The scaler's view of the fleet, kept by the watch events below (the client comes at login).
    memo.fleet = WatchedFleet(None, config.namespaces, relist_seconds=config.cache_relist_seconds)
    memo.metrics_server = None
    if config.metrics_port:
        memo.metrics_server, _thread = prometheus_client.start_http_server(config.metrics_port)
    memo.logged_in = asyncio.Event()
    memo.scaler = asyncio.create_task(_scale(memo), name="qwen-operator-scaler")
    memo.resync = asyncio.create_task(_resync(memo), name="qwen-operator-resync")


async def _scale(memo: kopf.Memo) -> None:
    """The one periodic evaluation of all QwenServices; it starts once the login gave us a client."""
    await memo.logged_in.wait()
    await Autoscaler(memo.cluster, memo.config, memo.locks, fleet=memo.fleet).run(lambda: memo.cluster)


async def _resync(memo: kopf.Memo) -> None:
    """Level-based safety net: every ``resync_seconds``, reconcile every QwenService even without an
    event (a Service deleted by hand is not watched; a watch event may be lost). An unchanged service
    costs reads only."""
    await memo.logged_in.wait()
    while True:
        await asyncio.sleep(memo.config.resync_seconds)
        try:
            listed = await kube.list_watched(memo.cluster, kube.QWENSERVICES, memo.config.namespaces)
        except Exception:
            log.exception("resync: listing QwenServices failed")
            continue
        for body in listed:
            if body["metadata"].get("deletionTimestamp"):
                continue
            try:
                await _reconcile(memo, body, log, in_handler=False)
            except Exception:  # one bad service must not stop the others
                log.exception(
                    "resync of %s/%s failed", body["metadata"].get("namespace"), body["metadata"]["name"]
                )


def cluster_for(info: kopf.ConnectionInfo, fence: Callable[[], float] | None = None) -> kube.Cluster:
    """Our client, with the credentials kopf logged in with (and, under leader election, the fence
    every write checks)."""
    return kube.Cluster(
        ApiClient(
            kube.configuration(
                info.server,
                insecure=bool(info.insecure),
                ca_path=info.ca_path,
                ca_data=info.ca_data,
                token=info.token,
                scheme=info.scheme,
                username=info.username,
                password=info.password,
                certificate_path=info.certificate_path,
                certificate_data=info.certificate_data,
                private_key_path=info.private_key_path,
                private_key_data=info.private_key_data,
            )
        ),
        fence,
    )


async def stop_acting(memo: kopf.Memo) -> None:
    """Stop the scaler and the resync loops now (leadership lost, or the operator stopping)."""
    tasks = [t for t in (memo.get("scaler"), memo.get("resync")) if t is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in at run time (in-cluster service account, else $KUBECONFIG) and share it with our client."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        return None
    old: kube.Cluster | None = memo.get("cluster")
    memo.cluster = cluster_for(info, memo.get("fence"))
    memo.fleet.use(memo.cluster)
    if old is not None:
        await old.close()
    memo.logged_in.set()
    return info


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await stop_acting(memo)
    if memo.get("metrics_server") is not None:
        memo.metrics_server.shutdown()
    cluster: kube.Cluster | None = memo.get("cluster")
    if cluster is not None:
        await cluster.close()


def _log_events(outcome: Outcome, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    for event in outcome.events:
        log = logger.warning if event.type == "Warning" else logger.info
        log("%s: %s", event.reason, event.message)


def _post(
    body: Mapping[str, Any], outcome: Outcome, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    _log_events(outcome, logger)
    for event in outcome.events:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, dict(body))),
            type=event.type,
            reason=event.reason,
            message=event.message,
        )


async def _reconcile(
    memo: kopf.Memo, body: Mapping[str, Any], logger: Any, in_handler: bool = True
) -> Outcome:
    meta = body["metadata"]
    key = (meta.get("namespace"), meta["name"])
    lock: asyncio.Lock = memo.locks.setdefault(key, asyncio.Lock())
    async with lock:  # a QwenService change, a Deployment event and the scaler must not race
        # The scaler may have written status since kopf read this body: work from the latest copy.
        fresh = await memo.cluster.get(kube.QWENSERVICES, key[0] or "default", key[1])
        if fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
            return Outcome()
        config = memo.config
        outcome = await reconcile.reconcile(
            memo.cluster,
            fresh,
            rfc3339(utcnow()),
            config.policy(),
            config.render_defaults(),
            await memo.fleet.pods(),
        )
    if in_handler:
        _post(body, outcome, logger)
    elif outcome.writes:  # a resync: kopf posts events from its handlers only, so write them as the
        # scaler does, and only for a repair (a standing warning is already in the status)
        _log_events(outcome, logger)
        await create_events(memo.cluster, fresh, outcome.events, utcnow())
    return outcome


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL, id="reconcile", backoff=15)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL, id="reconcile", backoff=15)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, id="reconcile", field="spec", backoff=15)
async def reconcile_service(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await _reconcile(memo, body, logger)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def service_seen(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the scaler's cache of QwenServices."""
    memo.fleet.apply("services", type, dict(body))


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_seen(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the scaler's cache of managed pods."""
    memo.fleet.apply("pods", type, dict(body))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """A managed Deployment changed (rollout progress, a pod ready, drift, deletion): keep the scaler's
    cache, and re-run its owner's reconcile."""
    memo.fleet.apply("deployments", type, dict(body))
    await _owner_changed(body, memo, logger)


@kopf.on.event("apps", "v1", "daemonsets", labels=MANAGED)
async def daemonset_event(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """An image pre-pull DaemonSet changed (nodes pulled, a pull failing): re-run its owner's reconcile,
    which reports it (ImagePrePulled)."""
    await _owner_changed(body, memo, logger)


async def _owner_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger) -> None:
    owner = owner_of(body)
    if owner is None or memo.get("cluster") is None:
        return
    namespace, name = owner
    svc = await memo.cluster.get(kube.QWENSERVICES, namespace, name)
    if svc is None or svc.get("metadata", {}).get("deletionTimestamp"):
        return
    await _reconcile(memo, svc, logger)
