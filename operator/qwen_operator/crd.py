"""Generate the QwenService CustomResourceDefinition from the pydantic models (pure).

Kubernetes wants a *structural* OpenAPI v3.0 schema: every node typed, no ``$ref``, no ``anyOf`` of
types, ``nullable`` instead of a ``null`` type, ``x-kubernetes-preserve-unknown-fields`` for free-form
objects. Pydantic emits JSON Schema 2020-12; :func:`structural` translates one into the other.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from pydantic import BaseModel

from qwen_operator import api

# Keys of JSON Schema that Kubernetes' structural schema has no use for.
_DROP_KEYS = {"title", "$defs", "additionalProperties"}
# Keys printed first in each node, for a readable CRD.
_LEADING_KEYS = ("type", "description", "default")

NAME_RULE = {
    "rule": "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits, '-', start with a "
    "letter, at most 63 characters): it names the Service",
}

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {"name": "Load", "type": "number", "jsonPath": ".status.autoscaling.observation.loadPerReplica"},
    {"name": "KV", "type": "number", "jsonPath": ".status.autoscaling.observation.kvCacheUsage"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Chat", "type": "string", "jsonPath": ".status.chatUI", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref`` (pydantic puts nested models under ``$defs``)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **siblings}, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)

    # Optional[X] -> X. No `nullable`: the API server then prunes explicit nulls, so an unset and a
    # null field look the same to CEL's has(). A field's own keys (description, default) win over X's.
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            options = node.pop(combinator)
            non_null = [o for o in options if o.get("type") != "null"]
            if len(non_null) != 1:
                raise ValueError(
                    f"cannot express {combinator} of {len(non_null)} types structurally: {options}"
                )
            node = {**non_null[0], **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}

    free_form = node.get("additionalProperties") is True or (
        node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node
    )
    typed_map = isinstance(node.get("additionalProperties"), dict)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 (a number) -> OpenAPI 3.0 (a bound plus a boolean).
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "maxItems" and node.get("type") != "array":
            continue
        out[key] = _structural(value)
    if typed_map:
        out["additionalProperties"] = _structural(node["additionalProperties"])
    if free_form:
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in out:
        out["properties"] = {name: _structural(prop) for name, prop in node["properties"].items()}
    first = [key for key in _LEADING_KEYS if key in out]
    return {**{key: out[key] for key in first}, **{k: v for k, v in out.items() if k not in first}}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(_resolve(raw, defs))
    return schema


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition as a plain dict."""
    spec_schema = structural(api.QwenServiceSpec)
    status_schema = structural(api.QwenServiceStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "qwen-operator",
                "app.kubernetes.io/part-of": "qwen-operator",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "qwen"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "QwenService serves a Qwen model with vLLM and autoscales it.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [NAME_RULE],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `make crds` from qwen_operator.api: do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def iter_cel_rules(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, str]]]:
    """Every (schema path, CEL rule) pair in a schema; used by tests and the docs."""
    found = [(path or ".", rule) for rule in schema.get("x-kubernetes-validations", [])]
    for name, prop in schema.get("properties", {}).items():
        found += iter_cel_rules(prop, f"{path}.{name}")
    if "items" in schema:
        found += iter_cel_rules(schema["items"], f"{path}[]")
    return found


REFERENCE_START = "<!-- spec-reference:start (generated by `make crds`) -->"
REFERENCE_END = "<!-- spec-reference:end -->"


def _type_of(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if node.get("type") == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if node.get("type") == "object" and "additionalProperties" in node:
        return "map of string"
    return str(node.get("type", "object"))


def reference_rows(node: dict[str, Any], path: str = "spec") -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        here = f"{path}.{name}"
        default = prop.get("default")
        shown = (
            "required"
            if name in required
            else ("" if default in (None, {}, []) else f"`{json.dumps(default)}`")
        )
        description = str(prop.get("description", "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{here}` | {_type_of(prop)} | {shown} | {description} |")
        child = prop.get("items", prop) if prop.get("type") == "array" else prop
        if "properties" in child:
            rows += reference_rows(child, here + ("[]" if prop.get("type") == "array" else ""))
    return rows


def spec_reference_markdown() -> str:
    """The spec reference table of the README, generated from the CRD schema."""
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    lines = ["| field | type | default | description |", "|---|---|---|---|", *reference_rows(spec)]
    return "\n".join([REFERENCE_START, *lines, REFERENCE_END])


def with_reference(readme: str) -> str:
    """The README with its spec reference section replaced by the generated one."""
    start, end = readme.index(REFERENCE_START), readme.index(REFERENCE_END) + len(REFERENCE_END)
    return readme[:start] + spec_reference_markdown() + readme[end:]
