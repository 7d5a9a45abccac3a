"""Property: every spec is either refused with a clear message, or renders objects the API server takes.

Hypothesis writes QwenServices that lean on the edges a security review found (quantities Kubernetes
cannot parse, names that are not DNS names, label syntax, toleration combinations, paths with '..',
Secret keys with '/', empty valueFrom, managed vLLM flags in their many spellings, ...). Each goes
through what `kubectl apply` does (tests.k8s.admission_errors: unknown fields, nulls, defaults, schema,
CEL), then the operator's own parse; whatever both accept is rendered, and every rendered object must
pass kubernetes-validate (upstream's schemas) and the API server's field validation
(tests.k8s.api_server_errors).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_operator import render, validation
from tests.k8s import admission_errors, api_server_errors, validate_k8s

# Both allowed, so that hostPath and root specs are rendered and checked too.
PERMISSIVE = validation.Policy(allow_host_path=True, allow_root=True)


def _edgy(valid: list[Any], edges: list[Any], alphabet: str, max_size: int = 8) -> st.SearchStrategy[Any]:
    """A valid value 19 times in 20 (so that most specs get through and are rendered), else an edge
    case or random text from the characters that matter."""

    def pick(roll: int) -> st.SearchStrategy[Any]:
        if roll == 0:
            return st.sampled_from(edges)
        if roll == 1:
            return st.text(alphabet=alphabet, max_size=max_size)
        return st.sampled_from(valid)

    return st.integers(0, 39).flatmap(pick)


QUANTITIES = _edgy(
    ["1", "500m", "1.5Gi", "1e3", ".5", "5.", "+4", "0", "1e-3", "1E", "1Ki", "32Gi"],
    ["1.2.3", "-4", "1eEi", "-5Gi", "0.1mi", " 1", "1 ", "", "1e", "Ki", "-0", "1e+", "."],
    "0123456789.+-eEKMGTPimnuk ",
)
NAMES = _edgy(
    ["w", "models", "a.b", "x-1", "a" * 253],
    ["A", "-a", "a-", "a_b", "", "x" * 254, "a..b", "reg cred", ".a"],
    "ab-._/A0 ",
)
KEYS = _edgy(["token", "ca.crt", "_k-1", "a.B"], ["a/b", "", "..", "a b"], "ab/._- 1")
LABEL_KEYS = _edgy(
    ["gpu", "nvidia.com/gpu.product", "kubernetes.io/os", "A.b", "x" * 63, "a.b/" + "c" * 63],
    [
        "bad key!",
        "a/b/c",
        "/x",
        "x/",
        "A.b/c",
        "x" * 64,
        "-x",
        "a.b/" + "c" * 64,
        ("a" * 63 + ".") * 4 + "/x",
    ],
    "ab./-_A1 !",
)
LABEL_VALUES = _edgy(
    ["", "x", "NVIDIA-A100", "a_b.c", "x" * 63], ["not a label", "-x", "x" * 64, "x."], "aB-_. 1"
)
PATHS = _edgy(
    ["/mnt/w", "/", "models", "a/..b", "./x", "w/q..", "..w"],
    ["/mnt/../etc", "a/../../b", "/etc", "..", "a/.."],
    "/.ab",
)
FLAGS = st.sampled_from(
    [
        "--enable-prefix-caching",
        "--api_key=x",
        "--api-k",
        "-tp",
        "-t",
        "8",
        "-qawq",
        "--config",
        "--conf",
        "--served_model_name=q",
        "--port-offset=1",
        "--max-num-batched-tokens=8192",
        "--api-key.x=1",
        "--no-enforce-eager",
        "--model",
        "--seed=1",
        "-O3",
        "--host=0.0.0.0",
        "--device-memory-utilization=1",
    ]
)

TOLERATIONS = st.fixed_dictionaries(
    {},
    optional={
        "key": LABEL_KEYS,
        "operator": st.sampled_from(["Exists", "Equal"]),
        "value": LABEL_VALUES,
        "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": st.integers(-10, 10),
    },
)
SPREAD = st.fixed_dictionaries(
    {"topologyKey": LABEL_KEYS},
    optional={
        "maxSkew": st.integers(-1, 3),
        "whenUnsatisfiable": st.sampled_from(["DoNotSchedule", "ScheduleAnyway", "Never"]),
        "minDomains": st.integers(-1, 3),
        "nodeAffinityPolicy": st.sampled_from(["Honor", "Ignore", "honor"]),
        "nodeTaintsPolicy": st.sampled_from(["Honor", "Ignore"]),
    },
)


def reserved_or(keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``keys``; sometimes a key the operator sets itself on its pods."""
    reserved = ["app.kubernetes.io/instance", "serving.qwenops.io/x", "prometheus.io/port"]
    return st.one_of(keys, st.sampled_from(reserved))


KEY_REF = st.fixed_dictionaries({"name": NAMES, "key": KEYS})
VALUE_FROM = st.fixed_dictionaries(
    {},
    optional={
        "secretKeyRef": KEY_REF,
        "configMapKeyRef": KEY_REF,
        "fieldRef": st.fixed_dictionaries(
            {
                "fieldPath": st.sampled_from(
                    ["status.podIP", "metadata.labels['a']", "spec.nope", "metadata.name"]
                )
            }
        ),
        "resourceFieldRef": st.fixed_dictionaries(
            {"resource": st.sampled_from(["limits.cpu", "requests.memory", "limits.gpu"])},
            optional={"divisor": QUANTITIES},
        ),
    },
)
SOURCES = st.one_of(
    st.fixed_dictionaries(
        {
            "hub": st.fixed_dictionaries(
                {},
                optional={
                    "cache": st.fixed_dictionaries(
                        {}, optional={"sizeLimit": QUANTITIES, "claimName": NAMES, "prefill": st.booleans()}
                    )
                },
            )
        }
    ),
    st.fixed_dictionaries({"pvc": st.fixed_dictionaries({"claimName": NAMES}, optional={"subPath": PATHS})}),
    st.fixed_dictionaries({"hostPath": st.fixed_dictionaries({"path": st.builds("/{}".format, PATHS)})}),
)
SPECS = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries(
            {"name": _edgy(["Qwen/Qwen2.5-7B-Instruct", "q", "/abs/q"], ["-x", "--help", "../x"], "-/.q")},
            optional={"source": SOURCES, "servedModelName": _edgy(["q", "qwen-7b"], ["-q", ""], "-q ")},
        )
    },
    optional={
        "engine": st.fixed_dictionaries(
            {},
            optional={
                "image": _edgy(
                    ["vllm/vllm-openai:v0.32.0", "r.io/v@sha256:ab"], [" vllm ", "", "a b", "v\t"], "v :\n"
                ),
                "imagePullSecrets": st.lists(NAMES, max_size=2),
                "prePullImage": st.booleans(),
                "loadFormat": st.sampled_from(["runai_streamer", "auto", "pt"]),
                "extraArgs": st.lists(FLAGS, max_size=3),
                "env": st.lists(
                    st.fixed_dictionaries(
                        {"name": _edgy(["A", "B_1", "x.y"], ["HF_TOKEN", "1x", ""], "A1_=")},
                        optional={"value": st.sampled_from(["v", ""]), "valueFrom": VALUE_FROM},
                    ),
                    max_size=2,
                ),
            },
        ),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "cpu": QUANTITIES,
                "memory": QUANTITIES,
                "sharedMemorySize": QUANTITIES,
                "gpus": st.integers(0, 2),
                "gpuResourceName": _edgy(
                    ["nvidia.com/gpu", "amd.com/gpu", "a.b/C_d.e"],
                    [
                        "",
                        "gpu",
                        "a/b/c",
                        "memory",
                        "kubernetes.io/gpu",
                        "example.com/",
                        "Example.com/gpu",
                        "x.kubernetes.io/gpu",
                        "a.b/" + "c" * 64,
                        "a" * 250 + ".b/gpu",
                    ],
                    "ab./-_A",
                ),
            },
        ),
        "scheduling": st.fixed_dictionaries(
            {},
            optional={
                "nodeSelector": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2),
                "tolerations": st.lists(TOLERATIONS, max_size=2),
                "runtimeClassName": NAMES,
                "priorityClassName": NAMES,
                "serviceAccountName": NAMES,
                "topologySpreadConstraints": st.lists(SPREAD, max_size=2),
            },
        ),
        "podMetadata": st.fixed_dictionaries(
            {},
            optional={
                "labels": st.dictionaries(reserved_or(LABEL_KEYS), LABEL_VALUES, max_size=2),
                "annotations": st.dictionaries(
                    reserved_or(LABEL_KEYS), st.text(alphabet='ab \n"', max_size=8), max_size=2
                ),
            },
        ),
        "rollout": st.fixed_dictionaries(
            {}, optional={"maxSurge": st.integers(-1, 2), "maxUnavailable": st.integers(-1, 2)}
        ),
        "disruptionBudget": st.fixed_dictionaries(
            {}, optional={"enabled": st.booleans(), "maxUnavailable": st.integers(-1, 2)}
        ),
        "security": st.fixed_dictionaries(
            {}, optional={"runAsUser": _edgy([0, 1000, 2**31 - 1], [2**31, 2**32, -1], "")}
        ),
        "apiKeySecretRef": KEY_REF,
        "chatUI": st.fixed_dictionaries(
            {"enabled": st.booleans()},
            optional={
                "credentialsSecretRef": st.fixed_dictionaries(
                    {"name": NAMES}, optional={"usernameKey": KEYS}
                ),
                "image": _edgy(["r.io/chat:1"], [" chat", ""], "c :"),
                "title": st.sampled_from(["Qwen", "", "x" * 101]),
                "serviceType": st.sampled_from(["ClusterIP", "LoadBalancer", "Ingress"]),
            },
        ),
        "networkPolicy": st.fixed_dictionaries(
            {"enabled": st.booleans()},
            optional={
                "sameNamespace": st.booleans(),
                "monitoringNamespaces": st.lists(
                    _edgy(["monitoring", "m-1"], ["M", "a.b", ""], "m-."), max_size=2
                ),
                "allowFrom": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "podSelector": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2),
                            "namespaceSelector": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2),
                        },
                    ),
                    max_size=2,
                ),
            },
        ),
    },
)


def _service(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "metadata": {"name": "qwen", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": spec,
    }


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(SPECS)
def test_every_spec_is_refused_clearly_or_renders_objects_the_api_server_accepts(spec):
    body = _service(spec)
    refused = admission_errors(body)
    if refused:
        assert all(isinstance(m, str) and m.strip() for m in refused)
        return
    try:
        svc = validation.parse(body, PERMISSIVE)
    except validation.InvalidSpec as exc:  # the operator's second line: reported in the status
        messages = exc.messages
    else:
        messages = []
    if messages:
        assert all(m.startswith("spec.") for m in messages), messages
        return
    for obj in render.render_all(svc):
        validate_k8s(obj)
        assert api_server_errors(obj) == [], (obj["kind"], spec)
