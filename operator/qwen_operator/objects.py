"""Pure helpers on Kubernetes objects as plain dicts: ownership, readiness, patches, Event bodies and
timestamps. No I/O; both controllers (the reconcile and the scaler) build on them."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from qwen_operator import api, labels
from qwen_operator.outcome import Event


def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime.datetime | None:
    """An RFC 3339 time as the API server writes it (``2026-11-30T12:00:00Z``), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a namespaced object."""
    meta = obj["metadata"]
    return meta.get("namespace", "default"), meta["name"]


def owned_by(obj: Mapping[str, Any], svc: api.QwenService) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == svc.metadata.uid and ref.get("kind") == api.KIND for ref in refs)


def owner_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the QwenService controlling a managed object, if any."""
    meta = obj.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("apiVersion", "").startswith(api.GROUP + "/"):
            return meta.get("namespace", "default"), ref["name"]
    name = (meta.get("labels") or {}).get(labels.SERVICE_LABEL)
    return (meta.get("namespace", "default"), name) if name else None


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Serving: Running, Ready condition True, not terminating."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    st = pod.get("status") or {}
    if st.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def is_subset(desired: Any, actual: Any) -> bool:
    """Whether ``actual`` already holds ``desired``; the API server's own defaults may be extra.

    Maps compare key by key; lists must have the same length and match item by item.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and is_subset(v, actual[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(desired) == len(actual)
            and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
        )
    return bool(desired == actual)


# Spec fields compared whole rather than as "the desired keys are there" (the API server adds no
# defaults inside them, and an extra key changes what they mean).
EXACT_SPEC_FIELDS = ("selector",)
NOT_BODY = ("apiVersion", "kind", "metadata", "status")


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def patch_ops(
    desired: Mapping[str, Any], actual: Mapping[str, Any], skip_spec: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """JSON-patch operations that bring ``actual`` to ``desired``, only where they differ.

    Each owned ``spec`` field is replaced whole, so fields removed from the QwenService disappear;
    labels and annotations are set key by key, so other controllers' keys survive.
    """
    ops: list[dict[str, Any]] = []
    meta = actual.get("metadata", {})
    for field in ("labels", "annotations"):
        want: Mapping[str, str] = desired["metadata"].get(field, {})
        have = meta.get(field) or {}
        if not have and want:
            ops.append({"op": "add", "path": _pointer("metadata", field), "value": dict(want)})
            continue
        for k, v in want.items():
            if have.get(k) != v:
                ops.append({"op": "add", "path": _pointer("metadata", field, k), "value": v})
    fields: list[tuple[tuple[str, ...], Any, Any]]
    if "spec" in desired:
        fields = [(("spec", f), v, (actual.get("spec") or {}).get(f)) for f, v in desired["spec"].items()]
    else:  # a ServiceAccount, a Role, a RoleBinding: their fields sit at the top
        fields = [((f,), v, actual.get(f)) for f, v in desired.items() if f not in NOT_BODY]
    for path, value, have_value in fields:
        field = path[-1]
        if len(path) > 1 and field in skip_spec:
            continue
        # A label selector is all-or-nothing: one extra label selects other pods (or none at all).
        differs = value != have_value if field in EXACT_SPEC_FIELDS else not is_subset(value, have_value)
        if differs:
            ops.append({"op": "add", "path": _pointer(*path), "value": value})
    return ops


def event_body(obj: Mapping[str, Any], event: Event, now: datetime.datetime) -> dict[str, Any]:
    """A core/v1 Event about a QwenService."""
    meta = obj["metadata"]
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": labels.MANAGED_BY},
        "reportingComponent": labels.MANAGED_BY,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
