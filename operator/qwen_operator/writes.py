"""Writes both controllers make about a QwenService: its status (only the fields that differ) and its
Events (where kopf's poster is not available: the scaler and the resync)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from qwen_operator import api, status
from qwen_operator.kube import EVENTS, QWENSERVICES, ClusterAPI
from qwen_operator.objects import event_body
from qwen_operator.outcome import Event, Outcome


async def write_status(
    cluster: ClusterAPI, svc_body: Mapping[str, Any], new: api.QwenServiceStatus, outcome: Outcome
) -> None:
    body = status.status_patch(new)
    old = svc_body.get("status") or {}
    outcome.status = body
    if body == old:
        return
    # Only the top-level fields that differ: the scaler and the reconcile both write status, and neither
    # may put back an older copy of a field the other one owns. null deletes in a merge patch.
    patch = {
        **{key: None for key in old if key not in body},
        **{k: v for k, v in body.items() if old.get(k) != v},
    }
    meta = svc_body["metadata"]
    await cluster.merge_patch(QWENSERVICES, meta["namespace"], meta["name"], {"status": patch}, sub="status")
    outcome.writes += 1


async def create_events(
    cluster: ClusterAPI, obj: Mapping[str, Any], events: Sequence[Event], now: datetime.datetime
) -> None:
    """Post Events about a QwenService through the API."""
    for event in events:
        await cluster.create(EVENTS, event_body(obj, event, now))
