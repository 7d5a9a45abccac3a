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
    assert spec["model"]["source"] == {"hub": {"cache": {"sizeLimit": "100Gi", "prefill": False}}}
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
    (
        "spec.engine",
        {"loadFormat": "runai_streamer", "extraArgs": ["--load-format=pt"]},
        "must not set --load-format when loadFormat is set",
    ),
    ("spec.engine.loadFormat", "pt", "is not one of"),
    ("metadata.name", "Qwen_7B", "DNS-1035 label"),
    ("spec.engine.gpuMemoryUtilization", 1.5, "maximum"),
    ("spec.engine.dtype", "int4", "is not one of"),
    ("spec.replicas", -1, "minimum"),
    ("spec.resources.memory", "lots", "non-negative Kubernetes quantity"),
    # Found by the security review: each was admitted and rendered a Deployment the API server refuses.
    ("spec.resources.cpu", "1.2.3", "non-negative Kubernetes quantity"),
    ("spec.resources.cpu", "-4", "non-negative Kubernetes quantity"),
    ("spec.resources.memory", "1eEi", "non-negative Kubernetes quantity"),
    ("spec.resources.cpu", "-5Gi", "non-negative Kubernetes quantity"),
    ("spec.resources.sharedMemorySize", "0.1mi", "non-negative Kubernetes quantity"),
    ("spec.model.source", {"hub": {"cache": {"sizeLimit": "1 "}}}, "non-negative Kubernetes quantity"),
    ("spec.resources.gpuResourceName", "", "does not match"),
    ("spec.resources.gpuResourceName", "gpu", "does not match"),
    ("spec.resources.gpuResourceName", "a/b/c", "does not match"),
    ("spec.resources.gpuResourceName", "memory", "does not match"),
    ("spec.resources.gpuResourceName", "kubernetes.io/gpu", "extended resource name outside kubernetes.io"),
    ("spec.scheduling.nodeSelector", {"gpu": "not a label value"}, "does not match"),
    (
        "spec.scheduling.tolerations",
        [{"key": "k", "operator": "Exists", "value": "v"}],
        "operator Exists takes no value",
    ),
    (
        "spec.scheduling.tolerations",
        [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}],
        "tolerationSeconds needs effect NoExecute",
    ),
    ("spec.scheduling.tolerations", [{"value": "v"}], "without a key needs operator Exists"),
    ("spec.scheduling.runtimeClassName", "Nvidia_Runtime", "does not match"),
    ("spec.scheduling.priorityClassName", "high priority", "does not match"),
    ("spec.scheduling.serviceAccountName", "-sa", "does not match"),
    ("spec.security.runAsUser", 2**31, "maximum"),
    ("spec.model.source", {"pvc": {"claimName": "w", "subPath": "/etc"}}, "relative, without '..'"),
    ("spec.model.source", {"pvc": {"claimName": "w", "subPath": "a/../../b"}}, "relative, without '..'"),
    ("spec.model.source", {"hostPath": {"path": "/mnt/../etc"}}, "must not contain '..'"),
    ("spec.apiKeySecretRef", {"name": "s", "key": "a/b"}, "does not match"),
    ("spec.engine.env", [{"name": "A", "valueFrom": {}}], "exactly one of secretKeyRef"),
    ("spec.engine.image", " vllm/vllm-openai:v0.32.0 ", "does not match"),
    ("spec.engine.imagePullSecrets", ["Reg Cred"], "does not match"),
    ("spec.unknownField", 1, 'unknown field "unknownField"'),
    ("spec.engine.extraArgs", ["--api_key=stolen"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["--served_model_name=x"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["--tensor_parallel_size=8"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["-tp", "8"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["-qawq"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["--config", "/models/x.yaml"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["--api-k=abbreviated"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["--api-key.x=1"], "must not set flags the operator manages"),
    ("spec.engine.extraArgs", ["--no-enforce-eager"], "must not set flags the operator manages"),
    ("spec.model.name", "--help", "must not start with '-'"),
    ("spec.model.servedModelName", "-x", "must not start with '-'"),
    (
        "spec.autoscaling.metrics.prometheus",
        {"insecureSkipVerify": True},
        "apply to this service's own url only",
    ),
    ("spec.autoscaling.metrics.prometheus", {"url": "http://user:pw@evil.example"}, "does not match"),
    ("spec.networkPolicy", {"enabled": True, "allowFrom": [{}]}, "needs namespaceSelector or podSelector"),
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
        _with(minimal, "spec.engine", {"extraArgs": ["--load-format", "pt"]}),  # no loadFormat: theirs
        _with(minimal, "spec.engine", {"loadFormat": "fastsafetensors", "prePullImage": True}),
        _with(minimal, "spec.resources", {"gpus": 0}),
        _with(minimal, "spec.resources", {"cpu": "500m", "memory": "1.5Gi", "sharedMemorySize": "1e9"}),
        _with(minimal, "spec.resources", {"gpuResourceName": "amd.com/gpu"}),
        _with(minimal, "spec.scheduling.nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
        _with(
            minimal,
            "spec.scheduling.tolerations",
            [{"operator": "Exists"}, {"key": "k", "effect": "NoExecute", "tolerationSeconds": 5}],
        ),
        _with(minimal, "spec.model.source", {"pvc": {"claimName": "w", "subPath": "models/..weights"}}),
        _with(
            minimal,
            "spec.engine.env",
            [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        ),
        _with(minimal, "spec.engine.extraArgs", ["--enable-prefix-caching", "--max-num-batched-tokens=8192"]),
        _with(minimal, "spec.autoscaling.metrics.prometheus", {"url": "https://prom.team-a.svc:9090/x"}),
        _with(
            minimal, "spec.networkPolicy", {"enabled": True, "allowFrom": [{"podSelector": {"app": "web"}}]}
        ),
        _with(minimal, "spec.security.runAsUser", 2**31 - 1),
        _with(minimal, "spec.engine.env", [{"name": "A", "value": None}]),  # nulls are dropped
    ]
    for obj in ok:
        assert admission_errors(obj) == [], obj["spec"]


def test_crd_yaml_round_trips():
    assert yaml.safe_load(crd.crd_yaml()) == crd.crd()
