"""Security rules that need no cluster: which URL may get which credentials, admin policy, managed vLLM
flags, quantities as Kubernetes parses them, YAML bombs."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qwen_operator import api, status, urls, validation, vllm_flags
from tests.k8s import is_quantity

# --------------------------------------------------------------------------------- URLs and credentials


@pytest.mark.parametrize(
    ("url", "allowed", "expect"),
    [
        ("https://prom.team-a.svc:9090", ["https://prom.team-a.svc:9090/"], True),
        ("https://prom.team-a.svc:9090/api/x", ["https://prom.team-a.svc:9090/api"], True),
        ("https://prom.team-a.svc:9090/apix", ["https://prom.team-a.svc:9090/api"], False),  # not a segment
        ("http://prom.team-a.svc:9090", ["https://prom.team-a.svc:9090/"], False),  # another scheme
        ("https://prom.team-a.svc:9091", ["https://prom.team-a.svc:9090/"], False),  # another port
        ("https://prom.team-a.svc", ["https://prom.team-a.svc:443"], True),  # the default port
        ("https://PROM.team-a.svc:9090", ["prom.team-a.svc"], True),  # host entry, any port, any case
        ("https://prom.team-a.svc.evil.example", ["prom.team-a.svc"], False),
        ("https://a.monitoring.svc", ["*.monitoring.svc"], True),
        ("https://monitoring.svc", ["*.monitoring.svc"], False),
        ("https://evilmonitoring.svc", ["*.monitoring.svc"], False),
        ("https://prom.team-a.svc@evil.example", ["prom.team-a.svc"], False),  # user info
        ("https://evil.example#@prom.team-a.svc", ["prom.team-a.svc"], False),
        ("ftp://prom.team-a.svc", ["prom.team-a.svc"], False),
        ("https://prom.team-a.svc:bad", ["prom.team-a.svc"], False),
        ("https://anything.example", [], False),  # nothing allowed by default
    ],
)
def test_the_allow_list_admits_only_what_it_names(url: str, allowed: list[str], expect: bool) -> None:
    assert urls.url_allowed(url, allowed) is expect


def test_the_crd_refuses_user_info_in_a_service_url() -> None:
    with pytest.raises(ValueError, match="should match pattern"):
        api.PrometheusSpec.model_validate({"url": "https://user:pw@prom.example"})


# ------------------------------------------------------------------------------------- admin policy


def _body(**spec: Any) -> dict[str, Any]:
    base = {"model": {"name": "Qwen/Qwen2.5-7B-Instruct"}}
    return {"metadata": {"name": "q", "namespace": "ml"}, "spec": {**base, **spec}}


def test_host_path_and_root_need_the_admin_s_consent() -> None:
    body = _body(model={"name": "q", "source": {"hostPath": {"path": "/"}}}, security={"runAsUser": 0})
    with pytest.raises(validation.InvalidSpec) as caught:
        validation.parse(body, validation.Policy())
    assert [m.split(":")[0] for m in caught.value.messages] == [
        "spec.model.source.hostPath",
        "spec.security.runAsUser",
    ]
    with pytest.raises(validation.InvalidSpec) as caught:
        validation.parse(body, validation.Policy(allow_host_path=True))
    assert len(caught.value.messages) == 1
    assert validation.parse(body, validation.Policy(allow_host_path=True, allow_root=True))


def test_label_keys_the_crd_cannot_check_are_reported_by_the_operator() -> None:
    """A map key's length cannot be bounded in a structural schema (a CEL rule over keys would blow the
    CRD's cost budget), so bad nodeSelector keys are the operator's to report."""
    for key in ("bad key!", "a/b/c", "x" * 64, "-x", ("a" * 63 + ".") * 4 + "/x"):
        with pytest.raises(validation.InvalidSpec, match="is not a label key"):
            validation.parse(_body(scheduling={"nodeSelector": {key: "v"}}))
    assert validation.parse(_body(scheduling={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}))


def test_every_cel_rule_is_on_bounded_input() -> None:
    """The API server refuses a CRD whose CEL rules may cost too much, costing each rule by the largest
    input it may see: a rule on a string needs its maxLength, a rule inside a list (run once per item)
    the list's maxItems, and no rule may read a map (its keys cannot be bounded)."""
    from qwen_operator import crd

    def walk(node: dict[str, Any], path: str) -> None:
        rules = node.get("x-kubernetes-validations", [])
        if rules:
            assert not isinstance(node.get("additionalProperties"), dict), f"{path}: a rule on a map"
            if node.get("type") == "string":
                assert "maxLength" in node, f"{path}: a rule on a string without maxLength"
            if node.get("type") == "array":
                assert "maxItems" in node, f"{path}: a rule on a list without maxItems"
                assert "maxLength" in node["items"], f"{path}: a rule on a list of unbounded strings"
        for name, prop in node.get("properties", {}).items():
            walk(prop, f"{path}.{name}")
        if "items" in node:
            if _has_rules(node["items"]):
                assert "maxItems" in node, f"{path}: rules inside a list without maxItems"
            walk(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            assert not _has_rules(node["additionalProperties"]), f"{path}: rules inside a map"

    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    walk(spec, "spec")


def _has_rules(node: dict[str, Any]) -> bool:
    return bool(node.get("x-kubernetes-validations")) or any(
        _has_rules(child)
        for child in [*node.get("properties", {}).values(), *([node["items"]] if "items" in node else [])]
    )


# ------------------------------------------------------------------------------- managed vLLM flags


@pytest.mark.parametrize(
    "arg",
    [
        "--api-key=x", "--api_key=x", "--api_key", "--api-k", "--api-key.x=1", "--served_model_name=x",
        "--tensor_parallel_size=8", "-tp", "-tp=8", "-t", "-q", "-qawq", "-q=awq", "--config",
        "--conf=x.yaml",
        "--model=x", "--mod", "--host", "--port=1", "--uds=/tmp/s", "--download-dir", "--no-enforce-eager",
        "--device-memory-utilization=1", "--max-model", "--trust_remote_code", "--shutdown_timeout=0",
    ],
)  # fmt: skip
def test_every_spelling_of_a_managed_flag_is_refused(arg: str) -> None:
    assert vllm_flags.managed_option(arg, api.MANAGED_FLAGS) is not None
    body = _body(engine={"extraArgs": [arg]})
    with pytest.raises(validation.InvalidSpec, match="which the operator manages"):
        validation.parse(body)


@pytest.mark.parametrize(
    "arg",
    ["--enable-prefix-caching", "--no-enable-prefix-caching", "--max-num-batched-tokens=8192", "--seed=1",
     "-O3", "--kv-cache-dtype", "fp8", "--port-offset=1", "--model-impl=vllm", "-dp", "-pp=2", "--"],
)  # fmt: skip
def test_other_flags_and_values_pass(arg: str) -> None:
    assert vllm_flags.managed_option(arg, api.MANAGED_FLAGS) is None
    assert validation.parse(_body(engine={"extraArgs": [arg]}))


# --------------------------------------------------------------------------------------- quantities

# Cases from apimachinery's own tests (k8s.io/apimachinery/pkg/api/resource/quantity_test.go:
# TestQuantityParse's table and its `invalid` list, TestQuantityString's canonical and alternate forms).
UPSTREAM_VALID = [
    "0", "0n", "0u", "0m", "0Ki", "0k", "0Mi", "0M", "0Gi", "0G", "0Ti", "0T", "0Pi", "0P", "0Ei", "0E",
    "1Ki", "1Mi", "1Gi", "1024Mi", "1000M", ".001Ki", ".000001Ki", "1e9", ".001e12", "1e-3", "0.001e0",
    "1e-9", "1000e-12", "80e-3", "300e6", "1e12", "1e3", "3e3", "00", "1n", "80n", "1080n", "1u", "80u",
    "1080u", "1080m", "1.08", "5000m", "0.5", "6Ki", "1001Gi", "1025024Mi", "1234567M", "3k", "9.01",
]  # fmt: skip
UPSTREAM_INVALID = ["1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", " 1", "1 "]


@pytest.mark.parametrize("text", UPSTREAM_VALID)
def test_quantities_kubernetes_parses_are_accepted(text: str) -> None:
    assert is_quantity(text), "the test's model of ParseQuantity disagrees with upstream"
    assert api.ResourcesSpec(cpu=text).cpu == text


@pytest.mark.parametrize("text", [*UPSTREAM_INVALID, "-4", "-5Gi", "1.2.3", "1eEi", ""])
def test_quantities_kubernetes_refuses_or_below_zero_are_rejected(text: str) -> None:
    assert not is_quantity(text) or text.startswith("-")
    with pytest.raises(ValueError, match="non-negative Kubernetes quantity"):
        api.ResourcesSpec(cpu=text)


# --------------------------------------------------------------------------------------- YAML bombs


BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    + ["kind: QwenService"]
)


def test_render_refuses_a_yaml_alias_bomb_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1000
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "qwen_operator", "render", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert run.returncode != 0
    assert "YAML aliases" in run.stderr
    assert run.stdout == ""


def test_render_still_reads_plain_multi_document_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    doc = {"apiVersion": api.API_VERSION, "kind": "QwenService", **copy.deepcopy(_body())}
    import yaml

    path.write_text(yaml.safe_dump(doc) + "---\n" + yaml.safe_dump({"kind": "ConfigMap"}))
    run = subprocess.run(
        [sys.executable, "-m", "qwen_operator", "render", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "kind: Deployment" in run.stdout


def test_a_huge_label_key_is_refused_in_a_few_words() -> None:
    """A 1.4 MB nodeSelector key (the CRD cannot bound a map key's length): the refusal, and the status
    it becomes, stay small (it used to quote the key: a 2.8 MB status patch on every reconcile)."""
    key = "k" * 1_400_000
    with pytest.raises(validation.InvalidSpec) as caught:
        validation.parse(_body(scheduling={"nodeSelector": {key: "v"}}))
    (message,) = caught.value.messages
    assert "longer than 317 characters" in message
    assert len(message) < 300
    new = status.invalid_status(api.QwenServiceStatus(), 1, ["x" * 100_000], "2026-12-06T00:00:00Z")
    assert all(len(c.message) <= status.MESSAGE_MAX for c in new.conditions)
    assert "more characters" in new.conditions[0].message


@pytest.mark.parametrize(
    "text",
    ["[" * 5000, "kind: QwenService\na:\n" + "".join(" " * i + "b:\n" for i in range(1, 3000))],
    ids=["flow", "block"],
)
def test_render_refuses_deeply_nested_yaml_with_a_message(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "qwen_operator", "render", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "nested deeper than 100 levels" in run.stderr
    assert "Traceback" not in run.stderr
