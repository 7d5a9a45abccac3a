"""The CRD is generated from the model, is structural, and rejects what cannot work."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from qwen_operator import crd
from tests.conftest import ROOT, load_examples
from tests.k8s import admission_errors, apply_defaults, schema, validate_k8s


def test_committed_crd_matches_the_model():
    committed = (ROOT / "crds" / "qwenservices.yaml").read_text()
    assert committed == crd.crd_yaml(), "crds/qwenservices.yaml drifted from the model: run `make crds`"


def test_crd_is_a_valid_kubernetes_object():
    validate_k8s(crd.crd())


def _walk(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def test_schema_is_structural():
    for path, node in _walk(schema()):
        if path.endswith(".properties") or path.endswith(".x-kubernetes-validations") or ".default" in path:
            continue
        if path.endswith("]") and ".x-kubernetes-validations" in path:
            continue
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "nullable", "const"):
            assert banned not in node, f"{path} has {banned}"
        if "properties" in node or "items" in node or "additionalProperties" in node:
            assert "type" in node, f"{path} has no type"
    for path, node in _walk(schema()):
        if "properties" in node and not path.endswith(".properties"):
            for name, prop in node["properties"].items():
                assert "type" in prop or prop.get("x-kubernetes-preserve-unknown-fields"), f"{path}.{name}"


def test_printer_columns_and_scale_paths_point_at_fields_that_exist():
    version = crd.crd()["spec"]["versions"][0]
    s = schema()

    def exists(json_path: str) -> bool:
        node = s
        for part in json_path.strip(".").split("."):
            if part == "metadata":
                return True
            props = node.get("properties", {})
            if part not in props:
                return False
            node = props[part]
        return True

    for column in version["additionalPrinterColumns"]:
        assert exists(column["jsonPath"]), column
    scale = version["subresources"]["scale"]
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert exists(scale[key]), scale[key]


@pytest.mark.parametrize("example", load_examples(), ids=lambda d: d["metadata"]["name"])
def test_examples_pass_admission(example):
    assert admission_errors(example) == []


def test_defaults_fill_in_a_minimal_spec(minimal):
    spec = apply_defaults(schema(), minimal)["spec"]
    assert spec["engine"]["gpuMemoryUtilization"] == 0.9
    assert spec["engine"]["image"].startswith("vllm/vllm-openai:v")
    assert spec["model"]["source"] == {"hub": {"cache": {"sizeLimit": "100Gi"}}}
    assert spec["autoscaling"]["enabled"] is False
    assert spec["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert spec["replicas"] == 1


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    node = obj
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return obj


INVALID = [
    (
        "spec.autoscaling",
        {"enabled": True, "minReplicas": 4, "maxReplicas": 2},
        "minReplicas must be <= maxReplicas",
    ),
    ("spec.model.source", {"pvc": {"claimName": "w"}, "hub": {}}, "exactly one of pvc, hostPath or hub"),
    ("spec.model.source", {}, "exactly one of pvc, hostPath or hub"),
    ("spec.resources", {"gpus": 3}, "multiple of engine.tensorParallelSize"),
    ("spec.engine", {"enableAutoToolChoice": True}, "enableAutoToolChoice needs toolCallParser"),
    ("spec.engine", {"extraArgs": ["--port=9000"]}, "must not set flags the operator manages"),
    ("spec.engine", {"extraArgs": ["--model", "x"]}, "must not set flags the operator manages"),
    ("metadata.name", "Qwen_7B", "DNS-1035 label"),
    ("spec.engine.gpuMemoryUtilization", 1.5, "maximum"),
    ("spec.engine.dtype", "int4", "is not one of"),
    ("spec.replicas", -1, "minimum"),
    ("spec.resources.memory", "lots", "does not match"),
    (
        "spec.engine.env",
        [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "set value or valueFrom, not both",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), INVALID, ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID]
)
def test_invalid_specs_are_rejected_with_an_actionable_message(minimal, path, value, message):
    obj = _with(minimal, path, value)
    if path == "spec.resources":
        obj["spec"]["engine"] = {"tensorParallelSize": 2}
    errors = admission_errors(obj)
    assert any(message in e for e in errors), errors


def test_a_valid_variant_of_each_rejected_case_passes(minimal):
    """The rules are not over-eager: the nearest valid objects pass."""
    ok = [
        _with(minimal, "spec.autoscaling", {"enabled": True, "minReplicas": 2, "maxReplicas": 2}),
        _with(minimal, "spec.model.source", {"pvc": {"claimName": "w"}}),
        _with(_with(minimal, "spec.resources", {"gpus": 4}), "spec.engine", {"tensorParallelSize": 2}),
        _with(minimal, "spec.engine", {"enableAutoToolChoice": True, "toolCallParser": "hermes"}),
        _with(minimal, "spec.engine", {"extraArgs": ["--enable-prefix-caching", "--port-offset=1"]}),
        _with(minimal, "spec.resources", {"gpus": 0}),
    ]
    for obj in ok:
        assert admission_errors(obj) == [], obj["spec"]


def test_crd_yaml_round_trips():
    assert yaml.safe_load(crd.crd_yaml()) == crd.crd()
