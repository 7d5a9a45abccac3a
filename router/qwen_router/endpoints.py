"""The ready engines: from the engines' Service's EndpointSlices, watched, or a fixed list.

An EndpointSlice (discovery.k8s.io/v1) lists a Service's pods with their addresses and conditions;
an engine is ready when its ``ready`` condition is (an endpoint being deleted is not). The Service
may have several slices: the engines are the union of the ready endpoints of all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"


def ready_engines(slices: Iterable[Mapping[str, Any]], port_name: str | None, port: int) -> dict[str, str]:
    """Engine name (the pod's, else the address) -> base URL, for the ready endpoints of ``slices``."""
    out: dict[str, str] = {}
    for item in slices:
        ports = item.get("ports") or []
        chosen = next((p.get("port") for p in ports if port_name is None or p.get("name") == port_name), None)
        number = int(chosen) if isinstance(chosen, int) else port
        for endpoint in item.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            addresses = endpoint.get("addresses") or []
            if not addresses:
                continue
            address = str(addresses[0])
            host = f"[{address}]" if ":" in address else address
            target = endpoint.get("targetRef") or {}
            name = str(target.get("name") or address)
            out[name] = f"http://{host}:{number}"
    return dict(sorted(out.items()))


async def watch_slices(
    namespace: str,
    service: str,
    port: int,
    update: Callable[[dict[str, str]], None],
    port_name: str | None = None,
    retry_seconds: float = 2.0,
) -> None:
    """Keep ``update`` told of the ready engines of ``service``: list, then watch from that version;
    after any failure, list again. Runs until cancelled."""
    from kubernetes_asyncio import client, config, watch

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # outside a cluster
    selector = f"{SERVICE_LABEL}={service}"
    async with client.ApiClient() as api_client:
        api = client.DiscoveryV1Api(api_client)
        while True:
            try:
                listed = await api.list_namespaced_endpoint_slice(namespace, label_selector=selector)
                slices = {s.metadata.name: api_client.sanitize_for_serialization(s) for s in listed.items}
                update(ready_engines(slices.values(), port_name, port))
                stream = watch.Watch().stream(
                    api.list_namespaced_endpoint_slice,
                    namespace,
                    label_selector=selector,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=300,
                )
                async for event in stream:
                    obj = event["object"]
                    item = obj if isinstance(obj, dict) else api_client.sanitize_for_serialization(obj)
                    name = str((item.get("metadata") or {}).get("name", ""))
                    if event["type"] == "DELETED":
                        slices.pop(name, None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        slices[name] = item
                    else:
                        break  # ERROR (e.g. 410 Gone): list again
                    update(ready_engines(slices.values(), port_name, port))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server went away, a 410, a bad answer: list again
                log.warning("watching EndpointSlices of %s/%s failed: %s", namespace, service, exc)
            await asyncio.sleep(retry_seconds)
