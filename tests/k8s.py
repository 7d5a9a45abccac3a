"""What a real API server does with a QwenService before storing it: defaults, schema, CEL.

Used by tests to check examples and invalid objects against the generated CRD, since the kmock
emulator runs no admission at all.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from openapi_schema_validator import OAS30Validator

from qwen_operator import crd

# Our oldest supported Kubernetes (CRD CEL rules are GA since 1.29) and the newest schema shipped.
K8S_VERSIONS = ("1.30.0", "1.37.0")


# kubernetes-validate reads and parses its schema files (megabytes of JSON) on every call; the files do
# not change, so read each once (the fuzz test validates thousands of objects).
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)


def validate_k8s(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not a valid object for every supported Kubernetes version (strict)."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def schema() -> dict[str, Any]:
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
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


def is_quantity(text: str) -> bool:
    """Whether apimachinery's resource.ParseQuantity accepts ``text``, written from its grammar
    (k8s.io/apimachinery/pkg/api/resource/quantity.go): an optional sign, digits with an optional
    fraction, then a binary-SI suffix (Ki..Ei), a decimal-SI one (n, u, m, k, M, G, T, P, E, or none)
    or a decimal exponent (e/E and a signed integer). Independent of the operator's own check."""
    digits = set("0123456789")
    i = 1 if text[:1] in ("+", "-") else 0
    whole = i
    while i < len(text) and text[i] in digits:
        i += 1
    count = i - whole
    if text[i : i + 1] == ".":
        i += 1
        fraction = i
        while i < len(text) and text[i] in digits:
            i += 1
        count += i - fraction
    if count == 0:
        return False
    suffix = text[i:]
    if suffix in {"Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "", "k", "M", "G", "T", "P", "E"}:
        return True
    exponent = suffix[1:].removeprefix("+").removeprefix("-") if suffix[:1] in ("e", "E") else ""
    return bool(exponent) and set(exponent) <= digits


def _cel_function(fn: Any) -> Any:
    def call(*args: Any) -> Any:
        return fn(*(str(a) if isinstance(a, celpy.celtypes.StringType) else a for a in args))

    return call


# The Kubernetes CEL libraries our rules use, which cel-python lacks: the quantity library (1.29+) and
# the extended strings library's indexOf (every version).
K8S_CEL_FUNCTIONS = {
    "isQuantity": _cel_function(lambda s: celpy.celtypes.BoolType(is_quantity(s))),
    "indexOf": _cel_function(lambda s, sub: celpy.celtypes.IntType(s.find(sub))),
}
_cel = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    return _cel.program(_cel.compile(rule), functions=K8S_CEL_FUNCTIONS)


def cel_errors(node_schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of every CEL rule that ``value`` breaks, evaluated where each rule sits."""
    errors: list[str] = []
    for rule in node_schema.get("x-kubernetes-validations", []):
        program = _program(rule["rule"])
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


def drop_nulls(node_schema: dict[str, Any], value: Any) -> Any:
    """The API server prunes explicit nulls of fields that are not nullable (none of ours is)."""
    if isinstance(value, dict):
        props = node_schema.get("properties", {})
        extra = node_schema.get("additionalProperties")
        return {
            k: drop_nulls(props.get(k, extra if isinstance(extra, dict) else {}), v)
            for k, v in value.items()
            if v is not None or node_schema.get("x-kubernetes-preserve-unknown-fields")
        }
    if isinstance(value, list):
        return [drop_nulls(node_schema.get("items", {}), item) for item in value]
    return value


def unknown_fields(node_schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields the schema does not know, as `kubectl apply` (server-side field validation Strict, its
    default) reports them instead of pruning them silently."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in node_schema:
        if node_schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
            return found
        for key, item in value.items():
            if key not in node_schema["properties"]:
                found.append(f'{path.lstrip(".") or "."}: unknown field "{key}"')
            else:
                found += unknown_fields(node_schema["properties"][key], item, f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(node_schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(node_schema["additionalProperties"], item, f"{path}.{key}")
    elif isinstance(value, list) and "items" in node_schema:
        for i, item in enumerate(value):
            found += unknown_fields(node_schema["items"], item, f"{path}[{i}]")
    return found


def upstream_schema(path: Path, version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of one version of a CRD kept under tests/data (an upstream copy)."""
    return _upstream_schema(str(path), version)


@functools.lru_cache(maxsize=8)
def _upstream_schema(path: str, version: str) -> dict[str, Any]:
    crd_doc = yaml.safe_load(Path(path).read_text())
    (found,) = [v for v in crd_doc["spec"]["versions"] if v["name"] == version]
    s: dict[str, Any] = found["schema"]["openAPIV3Schema"]
    return s


def admission_errors(obj: dict[str, Any], node_schema: dict[str, Any] | None = None) -> list[str]:
    """What ``kubectl apply`` of ``obj`` would be told: unknown fields, schema errors, then CEL rule
    messages (after the API server drops nulls and applies defaults). Against the QwenService CRD, or
    ``node_schema`` (another CRD's, read only)."""
    s = _schema() if node_schema is None else node_schema  # read only
    unknown = unknown_fields(s, obj)
    if unknown:
        return unknown
    defaulted = apply_defaults(s, drop_nulls(s, obj))
    schema_errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in OAS30Validator(s).iter_errors(defaulted)
    ]
    if schema_errors:
        return schema_errors
    return cel_errors(s, defaulted)


# --------------------------------------------------------------------------- what the API server refuses
# kubernetes-validate checks types and required fields; the API server's own validation
# (k8s.io/kubernetes/pkg/apis/core/validation, apimachinery's util/validation) checks names, quantities
# and field combinations too. These are those checks for the fields our objects carry, written from
# upstream's rules, independently of the operator's own patterns.

_LOWER_ALNUM = set("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM = _LOWER_ALNUM | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_dns_label(text: str) -> bool:
    return (
        0 < len(text) <= 63
        and set(text) <= _LOWER_ALNUM | {"-"}
        and text[0] in _LOWER_ALNUM
        and text[-1] in _LOWER_ALNUM
    )


def is_dns_subdomain(text: str) -> bool:
    """IsDNS1123Subdomain: at most 253 characters in all; its parts are not limited to 63."""
    return 0 < len(text) <= 253 and all(
        is_dns_label(part[:1] + part[-1:]) and set(part) <= _LOWER_ALNUM | {"-"} for part in text.split(".")
    )


def _is_name_part(text: str) -> bool:
    return (
        0 < len(text) <= 63 and set(text) <= _ALNUM | set("-_.") and text[0] in _ALNUM and text[-1] in _ALNUM
    )


def is_qualified_name(text: str) -> bool:
    """A label key: [prefix/]name, the prefix a DNS subdomain."""
    parts = text.split("/")
    if len(parts) == 1:
        return _is_name_part(text)
    return len(parts) == 2 and is_dns_subdomain(parts[0]) and _is_name_part(parts[1])


def is_label_value(text: str) -> bool:
    return text == "" or _is_name_part(text)


def _nonnegative_quantity(value: Any) -> bool:
    return (
        isinstance(value, str) and is_quantity(value) and not value.startswith("-") and value == value.strip()
    )


def _resource_name_ok(name: str) -> bool:
    if name in ("cpu", "memory", "ephemeral-storage") or name.startswith("hugepages-"):
        return True
    # an extended resource: fully qualified, outside kubernetes.io, and "requests.<name>" qualified too
    return "/" in name and "kubernetes.io/" not in name and is_qualified_name("requests." + name)


def _backsteps(path: str) -> bool:
    return ".." in path.split("/")


def _env_errors(env: list[dict[str, Any]]) -> list[str]:
    errors = []
    for var in env:
        source = var.get("valueFrom")
        if source is not None:
            if len(source) != 1:
                errors.append(f"env {var['name']}: valueFrom needs exactly one source")
            for ref in ("secretKeyRef", "configMapKeyRef"):
                if ref in source and not (
                    is_dns_subdomain(source[ref].get("name", ""))
                    and source[ref].get("key")
                    and set(source[ref]["key"]) <= _ALNUM | set("-._")
                ):
                    errors.append(f"env {var['name']}: bad {ref} {source[ref]}")
    return errors


def _pod_errors(pod: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    for container in [*pod["containers"], *pod.get("initContainers", [])]:
        image = container.get("image", "")
        if not image or image != image.strip():
            errors.append(f"image {image!r}: empty or with surrounding whitespace")
        for kind, amounts in (container.get("resources") or {}).items():
            for name, amount in amounts.items():
                if not _resource_name_ok(name):
                    errors.append(f"resources.{kind}: {name!r} is not a resource name")
                if not _nonnegative_quantity(amount):
                    errors.append(f"resources.{kind}.{name}: {amount!r} is not a quantity >= 0")
                if "/" in name and not str(amount).isdigit():
                    errors.append(f"resources.{kind}.{name}: an extended resource needs a whole number")
        requests = (container.get("resources") or {}).get("requests", {})
        limits = (container.get("resources") or {}).get("limits", {})
        for name in set(requests) & set(limits):
            if "/" in name and requests[name] != limits[name]:
                errors.append(f"{name}: an extended resource's request must equal its limit")
        for mount in container.get("volumeMounts", []):
            sub = mount.get("subPath", "")
            if sub.startswith("/") or _backsteps(sub):
                errors.append(f"subPath {sub!r}: must be relative, without '..'")
        errors += _env_errors(container.get("env", []))
    for volume in pod.get("volumes", []):
        size = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and not _nonnegative_quantity(size):
            errors.append(f"volume {volume['name']}: sizeLimit {size!r}")
        if "hostPath" in volume and _backsteps(volume["hostPath"]["path"]):
            errors.append(f"hostPath {volume['hostPath']['path']!r}: must not contain '..'")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and not is_dns_subdomain(claim):
            errors.append(f"claimName {claim!r}")
    for key, value in (pod.get("nodeSelector") or {}).items():
        if not (is_qualified_name(key) and is_label_value(value)):
            errors.append(f"nodeSelector {key!r}: {value!r}")
    for tol in pod.get("tolerations", []):
        if tol.get("operator") == "Exists" and tol.get("value"):
            errors.append(f"toleration {tol}: Exists takes no value")
        if "tolerationSeconds" in tol and tol.get("effect") != "NoExecute":
            errors.append(f"toleration {tol}: tolerationSeconds needs NoExecute")
        if not tol.get("key") and tol.get("operator") != "Exists":
            errors.append(f"toleration {tol}: no key needs Exists")
        if tol.get("key") and not is_qualified_name(tol["key"]):
            errors.append(f"toleration key {tol['key']!r}")
        if tol.get("operator", "Equal") == "Equal" and not is_label_value(tol.get("value", "")):
            errors.append(f"toleration value {tol.get('value')!r}")
    for c in pod.get("topologySpreadConstraints", []):
        if c.get("maxSkew", 0) < 1:
            errors.append(f"topologySpreadConstraint {c}: maxSkew must be at least 1")
        if not is_qualified_name(c.get("topologyKey", "")):
            errors.append(f"topologySpreadConstraint {c}: topologyKey")
        if c.get("whenUnsatisfiable") not in ("DoNotSchedule", "ScheduleAnyway"):
            errors.append(f"topologySpreadConstraint {c}: whenUnsatisfiable")
        if "minDomains" in c and (c["minDomains"] < 1 or c.get("whenUnsatisfiable") != "DoNotSchedule"):
            errors.append(f"topologySpreadConstraint {c}: minDomains needs DoNotSchedule and >= 1")
        errors += _selector_errors(c.get("labelSelector") or {})
    for field in ("runtimeClassName", "priorityClassName", "serviceAccountName"):
        if field in pod and not is_dns_subdomain(pod[field]):
            errors.append(f"{field} {pod[field]!r}")
    for secret in pod.get("imagePullSecrets", []):
        if not secret.get("name"):
            errors.append("imagePullSecrets: empty name")
    uid = (pod.get("securityContext") or {}).get("runAsUser")
    if uid is not None and not 0 <= uid <= 2**31 - 1:
        errors.append(f"runAsUser {uid}")
    return errors


def _selector_errors(selector: dict[str, Any]) -> list[str]:
    return [
        f"label {k!r}: {v!r}"
        for k, v in (selector.get("matchLabels") or {}).items()
        if not (is_qualified_name(k) and is_label_value(v))
    ]


def api_server_errors(obj: dict[str, Any]) -> list[str]:
    """What a real API server's validation would refuse in one rendered object (beyond its schema)."""
    meta = obj["metadata"]
    errors = [f"label {k!r}: {v!r}" for k, v in meta.get("labels", {}).items() if not is_label_value(v)]
    if obj["kind"] == "Service" and not is_dns_label(meta["name"]):
        errors.append(f"Service name {meta['name']!r}")
    if obj["kind"] == "Deployment":
        template = obj["spec"]["template"]
        errors += _pod_errors(template["spec"])
        errors += _selector_errors(obj["spec"]["selector"])
        errors += _selector_errors({"matchLabels": template["metadata"].get("labels", {})})
        errors += [
            f"annotation {k!r}"
            for k in template["metadata"].get("annotations", {})
            if not is_qualified_name(k)
        ]
        rolling = (obj["spec"].get("strategy") or {}).get("rollingUpdate", {})
        if rolling.get("maxSurge") == 0 and rolling.get("maxUnavailable") == 0:
            errors.append("strategy: maxSurge and maxUnavailable may not both be 0")
    if obj["kind"] == "Job":
        if len(meta["name"]) > 63:
            errors.append(f"Job name {meta['name']!r}: its pods' job-name label takes at most 63 characters")
        errors += _pod_errors(obj["spec"]["template"]["spec"])
        errors += _selector_errors({"matchLabels": obj["spec"]["template"]["metadata"].get("labels", {})})
        if obj["spec"]["template"]["spec"].get("restartPolicy") not in ("OnFailure", "Never"):
            errors.append("a Job's pods restart OnFailure or Never")
    if obj["kind"] == "PodDisruptionBudget":
        errors += _selector_errors(obj["spec"]["selector"])
        if obj["spec"].get("maxUnavailable", 0) < 0:
            errors.append("maxUnavailable must be >= 0")
    if obj["kind"] == "NetworkPolicy":
        errors += _selector_errors(obj["spec"]["podSelector"])
        for rule in obj["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                for selector in peer.values():
                    errors += _selector_errors(selector)
    return errors
