"""What a real API server does with a QwenService before storing it: defaults, schema, CEL.

Used by tests to check examples and invalid objects against the generated CRD, since the kmock
emulator runs no admission at all.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import kubernetes_validate
from openapi_schema_validator import OAS30Validator

from qwen_operator import crd

# Our oldest supported Kubernetes (CRD CEL rules are GA since 1.29) and the newest schema shipped.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def validate_k8s(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not a valid object for every supported Kubernetes version (strict)."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def schema() -> dict[str, Any]:
    s: dict[str, Any] = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return s


def apply_defaults(node_schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, as the API server does it: absent fields with a default get it."""
    if isinstance(value, dict) and "properties" in node_schema:
        out = dict(value)
        for name, prop in node_schema["properties"].items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = apply_defaults(prop, out[name])
        return out
    if isinstance(value, list) and "items" in node_schema:
        return [apply_defaults(node_schema["items"], item) for item in value]
    return value


_cel = celpy.Environment()


def cel_errors(node_schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of every CEL rule that ``value`` breaks, evaluated where each rule sits."""
    errors: list[str] = []
    for rule in node_schema.get("x-kubernetes-validations", []):
        program = _cel.program(_cel.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(rule["message"])
    if isinstance(value, dict):
        for name, prop in node_schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(prop, value[name])
    if isinstance(value, list) and "items" in node_schema:
        for item in value:
            errors += cel_errors(node_schema["items"], item)
    return errors


def admission_errors(obj: dict[str, Any]) -> list[str]:
    """What ``kubectl apply`` of ``obj`` would be told: schema errors, then CEL rule messages."""
    s = schema()
    defaulted = apply_defaults(s, obj)
    schema_errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in OAS30Validator(s).iter_errors(defaulted)
    ]
    if schema_errors:
        return schema_errors
    return cel_errors(s, defaulted)
