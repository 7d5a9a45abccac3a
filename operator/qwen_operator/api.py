"""The QwenService API (``serving.qwenops.io/v1alpha1``), defined once.

These pydantic models are the single source of truth: ``qwen_operator.crd`` generates the
CustomResourceDefinition (structural schema, defaults, CEL rules, printer columns) from them, the
renderers consume them, and the README's spec reference is checked against them.

Pure module: no Kubernetes, kopf or Prometheus imports. It is long on purpose: every field, its
default, its description and its CEL rule sit together, because the CRD, the chart and the README are
generated from exactly this text; splitting it would scatter one schema over several files.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, ClassVar, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from qwen_operator import labels, urls, vllm_flags
from qwen_operator.gpu_targets import (
    DEFAULT_CONCURRENCY,
    GPU_PRODUCT_LABEL,
    default_concurrency,
    seed_capacity,
)

GROUP = "serving.qwenops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QwenService"
PLURAL = "qwenservices"
SINGULAR = "qwenservice"
SHORT_NAMES = ("qsvc",)

# The vLLM OpenAI-compatible server image each operator release defaults to (see docs/install.md).
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
VLLM_PORT = 8000
# The chat page (images/chatui), released with the operator.
DEFAULT_CHAT_UI_IMAGE = "ghcr.io/qwenops/qwen-chat-ui:0.1.0"
CHAT_UI_PORT = 7860
# The router (router/, images/router), released with the operator.
DEFAULT_ROUTER_IMAGE = "ghcr.io/qwenops/qwen-router:0.1.0"
ROUTER_PORT = 8000
# The Gateway API Inference Extension's endpoint picker (routing.mode InferencePool): the last release of
# its upstream chart (config/charts/inferencepool, v1.5.0); the EPP has since moved to llm-d-router.
DEFAULT_ENDPOINT_PICKER_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0"
# The image pre-pull DaemonSet's container that holds each pod (engine.prePullImage).
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"

# Flags the operator sets itself, by vLLM's option dest; repeating them in extraArgs would make two
# sources of truth (or, for the API key, a way around the Secret). vllm_flags lists every spelling
# vLLM's parser accepts for each (aliases such as -tp, underscores, --no-...).
MANAGED_FLAGS = (
    "model",
    "served_model_name",
    "host",
    "port",
    "uds",
    "api_key",
    "tensor_parallel_size",
    "download_dir",
    "revision",
    "shutdown_timeout",
    # set from spec fields: use the field instead
    "trust_remote_code",
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "enforce_eager",
    "quantization",
    "cpu_offload_gb",
    "max_num_seqs",
    "enable_auto_tool_choice",
    "tool_call_parser",
)
# --load-format: managed only while spec.engine.loadFormat is set (objects that pass it in extraArgs keep
# working).
LOAD_FORMAT_FLAG = ("load_format",)
# vLLM 0.32's model loaders (vllm.model_executor.model_loader) that read weights faster from a shared
# volume or an object store, and the default; the e2e checks that vLLM's parser and loader registry
# accept each one. Each needs its package in the serving image (runai-model-streamer, fastsafetensors,
# instanttensor).
LoadFormat = Literal["auto", "safetensors", "fastsafetensors", "instanttensor", "runai_streamer"]
LOAD_FORMATS: tuple[str, ...] = get_args(LoadFormat)
# Environment variables the operator sets itself.
MANAGED_ENV = ("VLLM_API_KEY", "HF_TOKEN", "HF_HOME", "HOME", "USER", "VLLM_NO_USAGE_STATS")

# ------------------------------------------------------------------------- what the API server accepts
# The CRD and this model reject what a real API server would refuse in the objects we render, so that
# nothing admitted fails at create time. Kubernetes 1.30 is the oldest supported version: its CEL has
# the quantity library (1.29+) but not the format library (1.32+), so names are checked with the same
# patterns apimachinery's validation uses.
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"  # a qualified name's name part, <= 63
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = f"^{_SUBDOMAIN}$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A qualified name (label key): an optional DNS-subdomain prefix and '/', then a name.
QUALIFIED_NAME_PATTERN = f"^({_SUBDOMAIN}/)?{_NAME}$"
# An extended resource name: a qualified name with a domain, outside kubernetes.io.
EXTENDED_RESOURCE_PATTERN = f"^{_SUBDOMAIN}/{_NAME}$"
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # a key in a Secret or ConfigMap
NO_BACKSTEPS_RULE = "!self.matches('(^|/)[.][.](/|$)')"
# apimachinery's resource.Quantity grammar, without a sign (requests, limits and sizes are >= 0).
_QUANTITY = re.compile(r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
QUANTITY_RULE = "isQuantity(self) && !self.startsWith('-')"
QUANTITY_MESSAGE = "must be a non-negative Kubernetes quantity, e.g. 500m, 4, 32Gi"


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} {QUANTITY_MESSAGE}")
    return value


def _flag_value(value: str) -> str:
    if value.startswith("-"):
        raise ValueError(f"{value!r} must not start with '-' (vLLM would read it as a flag)")
    return value


Quantity = Annotated[
    str,
    AfterValidator(_quantity),
    Field(
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": QUANTITY_RULE, "message": QUANTITY_MESSAGE}]
        },
    ),
]
# Object names the pod refers to (Secrets, PVCs, classes, service accounts).
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
ConfigKey = Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
ImageName = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")]  # no whitespace
# A string vLLM receives as a flag's value: it must not look like a flag itself.
FlagValue = Annotated[
    str,
    AfterValidator(_flag_value),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.startsWith('-')",
                    "message": "must not start with '-' (vLLM reads it as a flag)",
                }
            ]
        }
    ),
]


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL validation rules for a schema node, as ``x-kubernetes-validations``."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


def _section(model: type[Any], description: str = "") -> Any:
    """A nested section that defaults to ``{}`` in the CRD, so the API server applies its inner defaults."""
    return Field(default_factory=model, json_schema_extra={"default": {}}, description=description or None)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- model


class SecretKeyRef(_Model):
    """A key in a Secret in the QwenService's namespace."""

    name: ObjectName = Field(description="Secret name.")
    key: ConfigKey = Field(description="Key in the Secret.")


class PVCSource(_Model):
    claim_name: ObjectName = Field(description="PersistentVolumeClaim holding the weights.")
    sub_path: str | None = Field(
        default=None,
        max_length=1024,
        json_schema_extra=_rules(
            ("!self.startsWith('/') && " + NO_BACKSTEPS_RULE, "subPath must be relative, without '..'")
        ),
        description="Folder inside the claim mounted at /models (relative, no '..').",
    )
    read_only: bool = Field(default=True, description="Mount the claim read-only.")


class HostPathSource(_Model):
    path: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^/",
        json_schema_extra=_rules((NO_BACKSTEPS_RULE, "hostPath.path must not contain '..'")),
        description=(
            "Absolute node path mounted at /models. Allowed only when the operator's admin allows "
            "hostPath (QWEN_OPERATOR_ALLOW_HOST_PATH)."
        ),
    )


class CacheVolume(_Model):
    """Where the Hugging Face cache lives: a PersistentVolumeClaim, or an emptyDir of a size limit."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("!self.prefill || has(self.claimName)", "cache.prefill needs a claimName (a ReadWriteMany PVC)")
        )
    )
    claim_name: ObjectName | None = Field(
        default=None, description="PVC for the Hub cache (keeps downloads across restarts)."
    )
    size_limit: Quantity = Field(default="100Gi", description="emptyDir size limit when no claim is named.")
    prefill: bool = Field(
        default=False,
        description=(
            "Fill the claim once, with a download Job, before any serving pod starts: pods wait for it "
            "(an init container) and then start offline from the cache, and the ModelCached condition "
            "shows where it stands. The claim must be ReadWriteMany (the Job and every replica mount it)."
        ),
    )

    @model_validator(mode="after")
    def _prefill_needs_a_claim(self) -> CacheVolume:
        if self.prefill and not self.claim_name:
            raise ValueError("cache.prefill needs a claimName (a ReadWriteMany PVC)")
        return self


class HubSource(_Model):
    """Download the model from the Hugging Face Hub at start-up."""

    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hub token (HF_TOKEN), for gated or private models."
    )
    cache: CacheVolume = _section(CacheVolume, "Hub cache volume.")


class ModelSource(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "(has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.hub) ? 1 : 0) == 1",
                "model.source must set exactly one of pvc, hostPath or hub",
            )
        )
    )
    pvc: PVCSource | None = Field(default=None, description="Weights on a PersistentVolumeClaim.")
    host_path: HostPathSource | None = Field(default=None, description="Weights on the node's filesystem.")
    hub: HubSource | None = Field(default=None, description="Download from the Hugging Face Hub.")

    @property
    def kind(self) -> Literal["pvc", "hostPath", "hub"]:
        if self.pvc is not None:
            return "pvc"
        if self.host_path is not None:
            return "hostPath"
        return "hub"


def _default_source() -> ModelSource:
    return ModelSource(hub=HubSource())


class ModelSpec(_Model):
    name: FlagValue = Field(
        min_length=1,
        max_length=512,
        description=(
            "Hugging Face model id (e.g. Qwen/Qwen2.5-7B-Instruct), or, with a pvc or hostPath source, "
            "a path relative to /models (or absolute)."
        ),
    )
    served_model_name: FlagValue | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Name clients send in requests; defaults to model.name.",
    )
    source: ModelSource = Field(
        default_factory=_default_source,
        json_schema_extra={"default": {"hub": {}}},
        description="Where the weights come from; defaults to a Hub download.",
    )
    revision: FlagValue | None = Field(
        default=None, min_length=1, max_length=256, description="Hub revision (branch, tag or commit)."
    )
    trust_remote_code: bool = Field(default=False, description="Allow custom model code from the Hub.")


# -------------------------------------------------------------------------------------------- engine


class KeyRef(_Model):
    name: ObjectName = Field(description="Secret or ConfigMap name.")
    key: ConfigKey = Field(description="Key in it.")
    optional: bool | None = Field(default=None, description="Start even if it is missing.")


class FieldRef(_Model):
    api_version: Literal["v1"] | None = Field(default=None)
    field_path: str = Field(
        max_length=512,
        pattern=(
            r"^(metadata\.(name|namespace|uid)|metadata\.(labels|annotations)\['[-._a-zA-Z0-9/]{1,317}'\]"
            r"|spec\.(nodeName|serviceAccountName)|status\.(hostIP|hostIPs|podIP|podIPs))$"
        ),
        description="A pod field (metadata.name, metadata.labels['k'], status.podIP, ...).",
    )


class ResourceFieldRef(_Model):
    container_name: Literal["vllm"] | None = Field(default=None)
    resource: Literal[
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ]
    divisor: Quantity | None = None


class EnvVarSource(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0)"
                " + (has(self.fieldRef) ? 1 : 0) + (has(self.resourceFieldRef) ? 1 : 0) == 1",
                "valueFrom must set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef",
            )
        )
    )
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None
    field_ref: FieldRef | None = None
    resource_field_ref: ResourceFieldRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        set_ = [self.secret_key_ref, self.config_map_key_ref, self.field_ref, self.resource_field_ref]
        if sum(ref is not None for ref in set_) != 1:
            raise ValueError(
                "valueFrom must set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef"
            )
        return self


class EnvVar(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("!(has(self.value) && has(self.valueFrom))", "env: set value or valueFrom, not both")
        )
    )
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = Field(default=None, max_length=32768)
    value_from: EnvVarSource | None = Field(
        default=None, description="A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...)."
    )


class EngineSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!self.enableAutoToolChoice || has(self.toolCallParser)",
                "enableAutoToolChoice needs toolCallParser",
            ),
            (
                "!has(self.extraArgs) || self.extraArgs.all(a, !a.matches('"
                + vllm_flags.managed_pattern(MANAGED_FLAGS)
                + "'))",
                "extraArgs must not set flags the operator manages or --config (use the spec's fields): "
                + ", ".join(vllm_flags.canonical(MANAGED_FLAGS)),
            ),
            (
                "!has(self.loadFormat) || !has(self.extraArgs) || self.extraArgs.all(a, !a.matches('"
                + vllm_flags.managed_pattern(LOAD_FORMAT_FLAG)
                + "'))",
                "extraArgs must not set --load-format when loadFormat is set",
            ),
        )
    )
    image: str = Field(
        default=DEFAULT_VLLM_IMAGE,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="vLLM server image (no whitespace).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent")
    image_pull_secrets: list[ObjectName] = Field(
        default_factory=list, max_length=16, description="Pull Secret names."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(default="auto", description="--dtype.")
    max_model_len: int | None = Field(default=None, ge=1, description="--max-model-len (context length).")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="--tensor-parallel-size.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="--gpu-memory-utilization: share of GPU memory vLLM may use."
    )
    enforce_eager: bool = Field(default=False, description="--enforce-eager: no CUDA graphs (faster start).")
    quantization: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="--quantization: awq, gptq, fp8, ...",
    )
    cpu_offload_gb: float | None = Field(
        default=None,
        ge=0,
        alias="cpuOffloadGB",
        description="--cpu-offload-gb: GiB of weights kept in CPU memory.",
    )
    max_num_seqs: int | None = Field(default=None, ge=1, description="--max-num-seqs: concurrent sequences.")
    enable_auto_tool_choice: bool = Field(default=False, description="--enable-auto-tool-choice.")
    tool_call_parser: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
        description="--tool-call-parser (hermes for Qwen2.5).",
    )
    shutdown_timeout_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="--shutdown-timeout: how long vLLM drains in-flight requests on SIGTERM.",
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=14400,
        description="How long a pod's engine may take to serve before the kubelet restarts it; raised (in"
        " steps, never lowered by itself) to over 3x the longest engine start measured lately when one"
        " took more than a third of it (status.startup.startupProbeSeconds).",
    )
    load_format: LoadFormat | None = Field(
        default=None,
        description="--load-format: how vLLM reads the weights: fastsafetensors (GPU direct reads of"
        " safetensors), instanttensor (CUDA, pipelined direct I/O), runai_streamer (Run:ai Model"
        " Streamer: concurrent reads, good on network volumes and object stores). The serving image"
        " must include the loader's package. Unset: vLLM's default.",
    )
    pre_pull_image: bool = Field(
        default=False,
        description="Pull the serving image ahead on every node the pods may land on (a DaemonSet that"
        " matches spec.scheduling and runs nothing), so a replica on such a node starts without pulling"
        " it. Reported in the ImagePrePulled condition; it never holds serving back.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"items": {"type": "string", "maxLength": 1024}},
        description="More vLLM flags, passed through verbatim.",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables.")


# ------------------------------------------------------------------------------ resources, scheduling


class ResourcesSpec(_Model):
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs per replica; defaults to engine.tensorParallelSize; 0 for CPU.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=EXTENDED_RESOURCE_PATTERN,
        json_schema_extra=_rules(
            (
                "!self.contains('kubernetes.io/') && self.indexOf('/') <= 244",
                "gpuResourceName must be an extended resource name outside kubernetes.io "
                "(domain/name, e.g. nvidia.com/gpu or amd.com/gpu)",
            )
        ),
        description="Extended resource name (domain/name, e.g. nvidia.com/gpu, amd.com/gpu).",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request (e.g. '4').")
    memory: Quantity | None = Field(default=None, description="Memory request and limit (e.g. '32Gi').")
    shared_memory_size: Quantity = Field(default="8Gi", description="/dev/shm size (memory-backed emptyDir).")


class Toleration(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "a toleration with operator Exists takes no value",
            ),
            (
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds needs effect NoExecute",
            ),
            (
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "a toleration without a key needs operator Exists",
            ),
        )
    )
    key: str | None = Field(default=None, max_length=317, pattern=QUALIFIED_NAME_PATTERN)
    operator: Literal["Exists", "Equal"] | None = None
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists")
        return self


LABEL_KEY_MAX = 253 + 1 + 63  # a DNS-subdomain prefix, '/', a name


def _label_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        shown = repr(key) if len(key) <= 80 else f"{key[:60]!r}... ({len(key)} characters)"
        if len(key) > LABEL_KEY_MAX:  # before any pattern: a megabyte key costs nothing more than this
            raise ValueError(f"{shown} is not a label key: longer than {LABEL_KEY_MAX} characters")
        prefix_too_long = "/" in key and key.index("/") > 253
        if prefix_too_long or not re.match(QUALIFIED_NAME_PATTERN, key):
            raise ValueError(f"{shown} is not a label key (an optional DNS-subdomain prefix and '/', a name)")
    return value


# Label values are checked by the schema. The keys are checked here only: a structural schema cannot
# bound a map key's length, so a CEL rule over the keys would be costed at the largest request the API
# server takes and exceed the CRD's CEL cost budget. A bad key is reported as InvalidSpec instead.
LabelMap = Annotated[
    dict[str, LabelValue],
    AfterValidator(_label_keys),
    Field(max_length=32, json_schema_extra={"maxProperties": 32}),
]


class TopologySpread(_Model):
    """A topologySpreadConstraint over this service's own pods (its label selector is filled in)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'",
                "minDomains needs whenUnsatisfiable DoNotSchedule",
            )
        )
    )
    topology_key: str = Field(
        max_length=317,
        pattern=QUALIFIED_NAME_PATTERN,
        description="The node label whose values are the domains, e.g. topology.kubernetes.io/zone.",
    )
    max_skew: int = Field(
        default=1, ge=1, le=1000, description="Most replicas one domain may have over another."
    )
    when_unsatisfiable: Literal["ScheduleAnyway", "DoNotSchedule"] = Field(
        default="ScheduleAnyway",
        description=(
            "ScheduleAnyway (the default here) prefers spreading; DoNotSchedule leaves a replica Pending "
            "rather than skew, which on a few GPU nodes can stall a scale-up."
        ),
    )
    min_domains: int | None = Field(default=None, ge=1, le=1000, description="With DoNotSchedule only.")
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    node_taints_policy: Literal["Honor", "Ignore"] | None = None

    @model_validator(mode="after")
    def _min_domains(self) -> TopologySpread:
        if self.min_domains is not None and self.when_unsatisfiable != "DoNotSchedule":
            raise ValueError("minDomains needs whenUnsatisfiable DoNotSchedule")
        return self


class SchedulingSpec(_Model):
    node_selector: LabelMap = Field(default_factory=dict, description="Node labels the pods need.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: dict[str, Any] | None = Field(default=None, description="A Kubernetes Affinity.")
    topology_spread_constraints: list[TopologySpread] = Field(
        default_factory=list,
        max_length=8,
        description="Spread the replicas over zones or nodes; each applies to this service's pods only.",
    )
    runtime_class_name: ObjectName | None = Field(default=None)
    priority_class_name: ObjectName | None = Field(default=None)
    service_account_name: ObjectName | None = Field(default=None)


class SecuritySpec(_Model):
    run_as_user: int = Field(
        default=1000,
        ge=0,
        le=2**31 - 1,
        description=(
            "UID the server runs as; 0 (root) drops runAsNonRoot and is allowed only when the operator's "
            "admin allows it (QWEN_OPERATOR_ALLOW_ROOT)."
        ),
    )
    read_only_root_filesystem: bool = Field(
        default=True, description="Root filesystem read-only; /tmp and the cache are writable volumes."
    )


def _unreserved(what: str, reserved: frozenset[str]) -> Any:
    def check(value: dict[str, str]) -> dict[str, str]:
        taken = sorted(k for k in value if k in reserved or k.startswith(f"{GROUP}/"))
        if taken:
            raise ValueError(f"{', '.join(map(repr, taken))}: the operator sets these {what} itself")
        return value

    return AfterValidator(check)


RESERVED_LABELS = frozenset(labels.common_labels("x"))
RESERVED_ANNOTATIONS = frozenset(
    {
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
        labels.SPEC_HASH_ANNOTATION,
        labels.POD_DELETION_COST_ANNOTATION,
    }
)
AnnotationMap = Annotated[
    dict[str, Annotated[str, Field(max_length=4096)]],
    AfterValidator(_label_keys),  # annotation keys have the label keys' syntax
    Field(max_length=32, json_schema_extra={"maxProperties": 32}),
]


class PodMetadataSpec(_Model):
    labels: Annotated[LabelMap, _unreserved("labels", RESERVED_LABELS)] = Field(
        default_factory=dict,
        description="More labels on the vLLM pods (cost labels, mesh opt-ins). Not the operator's own.",
    )
    annotations: Annotated[AnnotationMap, _unreserved("annotations", RESERVED_ANNOTATIONS)] = Field(
        default_factory=dict,
        description=(
            "More annotations on the vLLM pods, e.g. karpenter.sh/do-not-disrupt or sidecar injection. "
            "Changing them rolls the pods."
        ),
    )


class RolloutSpec(_Model):
    """How a spec change replaces the pods (the Deployment's RollingUpdate)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.maxSurge > 0 || self.maxUnavailable > 0", "maxSurge and maxUnavailable cannot both be 0")
        )
    )
    max_surge: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Extra pods (and their GPUs) a rollout may start above the replica count.",
    )
    max_unavailable: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "Pods a rollout may take down before their replacements are ready. With no spare GPU in the "
            "cluster, set maxSurge 0 and maxUnavailable 1."
        ),
    )

    @model_validator(mode="after")
    def _moves(self) -> RolloutSpec:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("maxSurge and maxUnavailable cannot both be 0")
        return self


class DisruptionBudgetSpec(_Model):
    enabled: bool = Field(
        default=True,
        description=(
            "A PodDisruptionBudget for the vLLM pods, so that a node drain evicts them one at a time. It "
            "does not hold back the scaler (a scale-down deletes pods, it does not evict them)."
        ),
    )
    max_unavailable: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Pods evictions may take down at once (at least 1, so that a drain can finish).",
    )


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(default="ClusterIP")
    port: int = Field(default=8000, ge=1, le=65535, description="Service port.")


# -------------------------------------------------------------------------------------- autoscaling


class ScalingTargets(_Model):
    concurrency_per_replica: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Requests in flight (running + waiting) one replica should carry. Unset: tuned per GPU "
            "from scheduling.nodeSelector's nvidia.com/gpu.product in the fleet benchmark (Qwen2.5-7B "
            "on the Azure conversation trace: L4 32, A10G 24, A100-80GB 48; docs/benchmark.md), and "
            "24 for other or unnamed GPUs or tensorParallelSize above 1; never above engine.maxNumSeqs. "
            "Load-test your own model."
        ),
    )

    def concurrency(self) -> float:
        """The target in force: the one set, else the default for an unnamed GPU."""
        return self.concurrency_per_replica or DEFAULT_CONCURRENCY

    kv_cache_usage: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description=(
            "KV-cache usage (0-1) one replica should stay under; above ~0.9 vLLM starts preempting "
            "requests, which costs recomputation. In SLO mode, a loaded pod above it also counts as "
            "the SLO failing at its load. On a pod that one more request of its running ones' mean "
            "size would take past it, the requests waiting count at that mean."
        ),
    )
    waiting_per_replica: float | None = Field(
        default=None, gt=0, description="Optional: queued requests one replica may hold (off by default)."
    )


class ScaleUpPolicy(_Model):
    max_step_percent: int = Field(
        default=100, ge=1, description="Grow by at most this percent per evaluation (100: double)..."
    )
    max_step_replicas: int = Field(
        default=4, ge=1, description="...or by this many replicas, whichever is more."
    )
    panic_threshold: float = Field(
        default=2.0,
        gt=1,
        description="Load at this multiple of the ready replicas' capacity skips the step limit (panic).",
    )


class ScaleDownPolicy(_Model):
    stabilization_window_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description=(
            "Scale down only to the highest recommendation of this window; a 7B replica takes minutes "
            "to come back, so a dip shorter than that must not remove one."
        ),
    )
    cooldown_after_scale_up_seconds: int = Field(
        default=300, ge=0, le=3600, description="No scale-down for this long after a scale-up."
    )
    max_step_replicas: int = Field(default=1, ge=1, description="Remove at most this many replicas per step.")
    zero_after_idle_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description=(
            "minReplicas 0: go to zero after this long without a request. Unset: chosen per service from "
            "its measured cold start and its own past idle gaps (to zero only when the gap is expected to "
            "outlast a cold start; at least 60 s)."
        ),
    )


class BasicAuthSecretRef(_Model):
    """A Secret holding a user name and a password."""

    name: ObjectName = Field(description="Secret name.")
    username_key: ConfigKey = Field(default="username")
    password_key: ConfigKey = Field(default="password")


class PrometheusSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!(has(self.bearerTokenSecretRef) && has(self.basicAuthSecretRef))",
                "prometheus: set bearerTokenSecretRef or basicAuthSecretRef, not both",
            ),
            (
                "has(self.url) || (!has(self.caSecretRef) && !self.insecureSkipVerify)",
                "prometheus: caSecretRef and insecureSkipVerify apply to this service's own url only",
            ),
        )
    )
    url: str | None = Field(
        default=None,
        max_length=1024,
        pattern=urls.URL_PATTERN,
        description=(
            "This service's own Prometheus, instead of the operator-wide QWEN_OPERATOR_PROMETHEUS_URL. "
            "Used only if the operator's admin allows it (QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS), and "
            "then only with this service's own credentials below, never the operator's."
        ),
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key (this namespace) with a bearer token sent to Prometheus."
    )
    basic_auth_secret_ref: BasicAuthSecretRef | None = Field(
        default=None, description="Secret (this namespace) with a user name and password for Prometheus."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with the PEM CA bundle that signs the certificate of this service's url.",
    )
    insecure_skip_verify: bool = Field(
        default=False, description="Do not verify the certificate of this service's url (testing only)."
    )


class MetricsSpec(_Model):
    source: Literal["prometheus", "pods"] | None = Field(
        default=None,
        description=(
            "Where load comes from: prometheus (queries, batched for all services), or pods (scrape each "
            "ready pod's /metrics directly). Defaults to the operator's QWEN_OPERATOR_METRICS_SOURCE."
        ),
    )
    prometheus: PrometheusSpec = _section(PrometheusSpec, "Per-service Prometheus connection.")
    stale_after_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Samples older than this count as missing (two to four scrape intervals).",
    )


class ReplicaCapacity(_Model):
    """What one replica serves while the SLO holds, alone in each kind of token: a mix counts linearly
    (half of each is a full replica). ``qwen-operator tune`` fits it from a load test."""

    prompt_tokens_per_second: float = Field(gt=0, le=1e7, description="Prompt (prefill) tokens per second.")
    generation_tokens_per_second: float = Field(gt=0, le=1e7, description="Generated tokens per second.")


class LatencySLO(_Model):
    """The latency the scaler aims at, at the fewest replicas: ``percentile`` % of requests get their
    first token within ``timeToFirstTokenSeconds`` (and, if set, their output tokens at most
    ``timePerOutputTokenSeconds`` apart on average)."""

    time_to_first_token_seconds: float = Field(
        gt=0, le=600, description="Time to first token (queueing and prefill included) a request may take."
    )
    time_per_output_token_seconds: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description=(
            "Optional: a request's mean time between output tokens (vLLM's "
            "vllm:request_time_per_output_token_seconds), for the same share of requests. Decoding slows "
            "as a replica's batch grows; missed under load, it scales up as a late first token does. "
            "Unset, only the first token is judged."
        ),
    )
    percentile: float = Field(
        default=99, ge=50, le=99.9, description="Share of requests, in percent, that must meet the bound."
    )
    replica_capacity: ReplicaCapacity | None = Field(
        default=None,
        description=(
            "One replica's capacity at the SLO (from qwen-operator tune). Without it, the GPU's "
            "calibration seeds it; either way the scaler corrects it from what the pods report and keeps "
            "the result in status.autoscaling.state.capacityScale."
        ),
    )
    cold_start_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description=(
            "How long a new replica takes to serve (pod created to Ready). Without it, the scaler "
            "measures the service's own pods (180 s until it has seen one)."
        ),
    )

    @property
    def allowance(self) -> float:
        """The share of requests that may miss the bounds (0.01 at the 99th percentile)."""
        return 1 - self.percentile / 100


Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)  # datetime.weekday() order
CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class BoundsWindow(_Model):
    """minReplicas and/or maxReplicas for part of the week, in the schedule's time zone."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must be <= maxReplicas",
            ),
            (
                "has(self.minReplicas) || has(self.maxReplicas)",
                "a window sets minReplicas, maxReplicas or both",
            ),
            ("self.start != self.end", "start and end must differ"),
        )
    )
    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        min_length=1,
        max_length=7,
        description="The days the window starts on (every day by default).",
    )
    start: str = Field(pattern=CLOCK_TIME, description="HH:MM, local time, inclusive.")
    end: str = Field(
        pattern=CLOCK_TIME,
        description="HH:MM, local time, exclusive; before start, the window runs past midnight.",
    )
    min_replicas: int | None = Field(default=None, ge=0, le=1000, description="minReplicas in the window.")
    max_replicas: int | None = Field(default=None, ge=1, le=1000, description="maxReplicas in the window.")

    def bounds(self, min_replicas: int, max_replicas: int) -> tuple[int, int]:
        """(min, max) in the window: its own, the spec's (given) where it sets none."""
        return (
            self.min_replicas if self.min_replicas is not None else min_replicas,
            self.max_replicas if self.max_replicas is not None else max_replicas,
        )


class ScalingSchedule(_Model):
    """Bounds by time of day (AIBrix offers the same): the first window that holds now sets them;
    outside every window, minReplicas and maxReplicas do."""

    time_zone: str = Field(
        default="UTC",
        max_length=64,
        pattern=r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$",
        description="An IANA time zone (Europe/Berlin): the windows' times, daylight saving included.",
    )
    windows: list[BoundsWindow] = Field(
        default_factory=list, max_length=16, description="The first that holds now sets the bounds."
    )

    def zone(self) -> ZoneInfo | None:
        """The time zone, or None when the name is no IANA zone this machine knows."""
        try:
            return ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            return None


class AutoscalingSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas")
        )
    )
    enabled: bool = Field(default=False, description="Let the operator own the replica count.")
    mode: Literal["Active", "Advisory"] = Field(
        default="Active",
        description=(
            "Active: the scaler sets the Deployment's replicas. Advisory: it decides every interval as "
            "it would, from its own advice, and reports each decision (status.autoscaling.advisedReplicas, "
            "Advised Events, the qwen_operator_desired_replicas metric) without touching the Deployment, "
            "which keeps spec.replicas: compare it with what runs today before switching."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Never fewer replicas than this. 0 (scale to zero) needs routing.mode Builtin: the router "
            "holds requests while no replica runs, and the first one wakes the service."
        ),
    )
    max_replicas: int = Field(
        default=5, ge=1, le=1000, description="Never more replicas (GPUs = maxReplicas x GPUs per replica)."
    )
    targets: ScalingTargets = _section(ScalingTargets, "Per-replica targets; the largest need wins.")
    tolerance: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Need within this fraction of the current replicas moves nothing.",
    )
    evaluation_interval_seconds: int = Field(
        default=15,
        ge=1,
        le=600,
        description="How often this service is evaluated (with Prometheus: no faster than it scrapes).",
    )
    scale_up: ScaleUpPolicy = _section(ScaleUpPolicy, "How fast replicas are added.")
    scale_down: ScaleDownPolicy = _section(ScaleDownPolicy, "How carefully replicas are removed.")
    metrics: MetricsSpec = _section(MetricsSpec, "Where the load and KV-cache metrics come from.")
    schedule: ScalingSchedule | None = Field(
        default=None,
        description="minReplicas/maxReplicas by time of day, e.g. more replicas kept warm in office hours.",
    )
    slo: LatencySLO | None = Field(
        default=None,
        description=(
            "Aim at a latency objective instead of the concurrency target: replicas follow the token "
            "load, one replica's learned capacity at the SLO, and the load expected one cold start "
            "ahead. The targets stay as the fallback while the pods report no traffic, and KV-cache "
            "usage as a safety cap."
        ),
    )

    @property
    def owns_replicas(self) -> bool:
        """Whether the scaler sets the Deployment's replicas (on, and not advisory)."""
        return self.enabled and self.mode == "Active"


# ------------------------------------------------------------------------------------------ network


class NetworkPeer(_Model):
    """Pods allowed to reach the server: those matching podSelector in the namespaces matching
    namespaceSelector (either may be left out: this namespace, or every pod of those namespaces)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.namespaceSelector) || has(self.podSelector)",
                "a peer needs namespaceSelector or podSelector",
            )
        )
    )
    namespace_selector: LabelMap | None = Field(
        default=None, description="matchLabels of the namespaces (e.g. kubernetes.io/metadata.name)."
    )
    pod_selector: LabelMap | None = Field(default=None, description="matchLabels of the pods.")

    @model_validator(mode="after")
    def _some(self) -> NetworkPeer:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("a peer needs namespaceSelector or podSelector")
        return self


class NetworkPolicySpec(_Model):
    enabled: bool = Field(
        default=False,
        description=(
            "Create a NetworkPolicy that admits traffic to the server's port only from the peers below. "
            "Off: every pod in the cluster can reach the model (set apiKeySecretRef too)."
        ),
    )
    same_namespace: bool = Field(default=True, description="Admit every pod in this namespace.")
    monitoring_namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]] = Field(
        default_factory=lambda: ["monitoring"],
        json_schema_extra={"default": ["monitoring"]},
        max_length=16,
        description=(
            "Namespaces whose pods may scrape /metrics (Prometheus; the operator's own namespace too with "
            "metrics source pods). The port serves the API as well."
        ),
    )
    allow_from: list[NetworkPeer] = Field(
        default_factory=list, max_length=16, description="More clients: namespace and/or pod label selectors."
    )


CHAT_UI_PLAIN_HTTP = (
    "chatUI.serviceType NodePort or LoadBalancer puts the login page outside the cluster: set "
    "chatUI.tlsSecretRef (a kubernetes.io/tls Secret) so that it is served over HTTPS, or keep ClusterIP "
    "behind an Ingress or Gateway that terminates TLS"
)


class ChatUISpec(_Model):
    """A small Gradio chat page in front of the model, for people who do not use the API."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!self.enabled || has(self.credentialsSecretRef)",
                "chatUI.enabled needs credentialsSecretRef (the page's user name and password)",
            ),
            ("self.serviceType == 'ClusterIP' || has(self.tlsSecretRef)", CHAT_UI_PLAIN_HTTP),
        )
    )
    enabled: bool = Field(default=False, description="Deploy the chat page (a Deployment and a Service).")
    credentials_secret_ref: BasicAuthSecretRef | None = Field(
        default=None,
        description="Secret (this namespace) with the user name and password the page asks for.",
    )
    image: ImageName | None = Field(
        default=None,
        description=(
            "The chat page's image (images/chatui; no whitespace). Unset: the operator's default, "
            "QWEN_OPERATOR_CHAT_UI_IMAGE (chart value chatUI.image)."
        ),
    )
    title: str = Field(default="Qwen chat", min_length=1, max_length=100, description="The page's title.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP",
        description=(
            "Type of the page's Service (port 80, or 443 with tlsSecretRef). NodePort and LoadBalancer "
            "need tlsSecretRef: the login is never offered outside the cluster in plain HTTP."
        ),
    )
    tls_secret_ref: ObjectName | None = Field(
        default=None,
        description=(
            "A kubernetes.io/tls Secret (this namespace; keys tls.crt and tls.key): the page serves HTTPS "
            "with it. Without it, it serves plain HTTP, for a ClusterIP Service behind an Ingress or "
            "Gateway that terminates TLS."
        ),
    )

    @model_validator(mode="after")
    def _credentials(self) -> ChatUISpec:
        if self.enabled and self.credentials_secret_ref is None:
            raise ValueError("chatUI.enabled needs credentialsSecretRef (the page's user name and password)")
        if self.service_type != "ClusterIP" and self.tls_secret_ref is None:
            raise ValueError(CHAT_UI_PLAIN_HTTP)
        return self


# ------------------------------------------------------------------------------------------ routing

HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*$"  # an HTTP header name (RFC 9110 token), or empty


class BuiltinRouterSpec(_Model):
    """The operator's own router (images/router) in front of the vLLM pods."""

    image: ImageName | None = Field(
        default=None,
        description=(
            "The router's image (images/router; no whitespace). Unset: the operator's default, "
            "QWEN_OPERATOR_ROUTER_IMAGE (chart value router.image)."
        ),
    )
    replicas: int = Field(
        default=2, ge=1, le=20, description="Router replicas (2: one may go while the other serves)."
    )
    hold_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description=(
            "How long a request may wait at the router for a ready vLLM pod (a cold start, a rollout) "
            "before it is answered 503; streaming requests get keepalive comments meanwhile."
        ),
    )
    queue_size: int = Field(
        default=1000,
        ge=1,
        le=100000,
        description="Requests held at most per router replica; beyond it, 429 with Retry-After.",
    )
    session_header: str = Field(
        default="x-session-id",
        max_length=64,
        pattern=HEADER_NAME_PATTERN,
        description=(
            "A request header that keeps a client's requests on one pod (its conversation's prefix "
            "cache); empty: none, prefix affinity alone."
        ),
    )


class GatewayRef(_Model):
    """The Gateway (Gateway API) whose listener takes the model's traffic."""

    name: ObjectName = Field(description="The Gateway's name.")
    namespace: Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)] | None = Field(
        default=None, description="Its namespace (this one when unset; another must allow the route)."
    )
    section_name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)] | None = Field(
        default=None, description="One listener of it, by name (all that accept the route when unset)."
    )


class InferencePoolSpec(_Model):
    """The Gateway API Inference Extension: an InferencePool of the vLLM pods and its endpoint picker."""

    endpoint_picker_image: ImageName | None = Field(
        default=None,
        description=(
            "The endpoint picker's image. Unset: the operator's default, "
            "QWEN_OPERATOR_ENDPOINT_PICKER_IMAGE (the upstream one, registry.k8s.io/"
            "gateway-api-inference-extension/epp)."
        ),
    )
    failure_mode: Literal["FailOpen", "FailClose"] = Field(
        default="FailOpen",
        description=(
            "What the Gateway does while the endpoint picker does not answer: FailOpen sends requests to "
            "a pod of the pool anyway (upstream chart's default), FailClose refuses them."
        ),
    )
    gateway_ref: GatewayRef | None = Field(
        default=None,
        description="A Gateway to route the model's traffic from: an HTTPRoute NAME (all paths) to the pool.",
    )


class RoutingSpec(_Model):
    mode: Literal["None", "Builtin", "InferencePool"] = Field(
        default="None",
        description=(
            "None: the Service picks a pod at random (kube-proxy). Builtin: the Service reaches a router "
            "(a Deployment of its own, images/router) that keeps a conversation or a shared prompt prefix "
            "on the pods that hold it in their prefix cache (bounded load), sends other requests to the "
            "pod with the least prompt work pending, and holds requests while no pod is ready; the vLLM "
            "pods get a headless Service of "
            "their own, NAME-engines. A serving service moves to the router once a router pod is Ready. "
            "InferencePool: an InferencePool NAME (Gateway API Inference Extension) of the vLLM pods, its "
            "endpoint picker (NAME-epp) and, with a gatewayRef, an HTTPRoute; the Service NAME stays."
        ),
    )
    builtin: BuiltinRouterSpec = _section(BuiltinRouterSpec, "The router's settings (mode Builtin).")
    inference_pool: InferencePoolSpec = _section(
        InferencePoolSpec, "The InferencePool and its endpoint picker (mode InferencePool)."
    )

    @property
    def router(self) -> BuiltinRouterSpec | None:
        """The built-in router's settings when the mode asks for it."""
        return self.builtin if self.mode == "Builtin" else None

    @property
    def pool(self) -> InferencePoolSpec | None:
        """The InferencePool's settings when the mode asks for it."""
        return self.inference_pool if self.mode == "InferencePool" else None


# ----------------------------------------------------------------------------------------- the spec


SCALE_TO_ZERO_NEEDS_ROUTER = (
    "autoscaling minReplicas 0 (scale to zero) needs routing.mode Builtin: without a router, a request "
    "that comes while no replica runs fails"
)


class QwenServiceSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.resources.gpus) || self.resources.gpus == 0"
                " || self.resources.gpus % self.engine.tensorParallelSize == 0",
                "resources.gpus must be a multiple of engine.tensorParallelSize",
            ),
            (
                "self.routing.mode == 'Builtin' || (self.autoscaling.minReplicas >= 1"
                " && (!has(self.autoscaling.schedule) || !has(self.autoscaling.schedule.windows)"
                " || self.autoscaling.schedule.windows.all(w, !has(w.minReplicas) || w.minReplicas >= 1)))",
                SCALE_TO_ZERO_NEEDS_ROUTER,
            ),
        )
    )
    model: ModelSpec = Field(description="Which model to serve and where its weights come from.")
    engine: EngineSpec = _section(EngineSpec, "The vLLM server and its flags.")
    resources: ResourcesSpec = _section(ResourcesSpec, "GPUs, CPU and memory per replica.")
    scheduling: SchedulingSpec = _section(SchedulingSpec, "Where the pods may run.")
    security: SecuritySpec = _section(SecuritySpec, "The pods' security context.")
    pod_metadata: PodMetadataSpec = _section(PodMetadataSpec, "More labels and annotations on the vLLM pods.")
    rollout: RolloutSpec = _section(RolloutSpec, "How a spec change replaces the pods.")
    disruption_budget: DisruptionBudgetSpec = _section(
        DisruptionBudgetSpec, "A PodDisruptionBudget for the vLLM pods (on by default)."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with the API key clients must send (vLLM --api-key)."
    )
    service: ServiceSpec = _section(ServiceSpec, "The Service in front of the pods.")
    routing: RoutingSpec = _section(RoutingSpec, "How requests reach a pod (mode None by default).")
    network_policy: NetworkPolicySpec = _section(
        NetworkPolicySpec, "Who may reach the server (a NetworkPolicy; off by default)."
    )
    chat_ui: ChatUISpec = Field(
        default_factory=ChatUISpec,
        alias="chatUI",
        json_schema_extra={"default": {}},
        description="A chat page with a login in front of the model (off by default).",
    )
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Replicas when autoscaling is off or in mode Advisory."
    )
    autoscaling: AutoscalingSpec = _section(
        AutoscalingSpec, "Let the operator move replicas between minReplicas and maxReplicas on load."
    )

    def scaling(self) -> AutoscalingSpec:
        """The autoscaling block with its GPU-dependent defaults filled in: what the scaler decides on."""
        auto = self.autoscaling
        targets = auto.targets
        if targets.concurrency_per_replica is not None:
            return auto
        product = self.scheduling.node_selector.get(GPU_PRODUCT_LABEL)
        target = default_concurrency(product, self.engine.tensor_parallel_size, self.engine.max_num_seqs)
        filled = targets.model_copy(update={"concurrency_per_replica": target})
        return auto.model_copy(update={"targets": filled})

    def seed_capacity(self) -> tuple[float, float]:
        """One replica's peak prompt and generated tokens per second on the GPU the pods are pinned to
        (the nodeSelector's product, times the tensor-parallel size): where SLO mode's performance
        model starts before it has learned the replicas' own speed."""
        product = self.scheduling.node_selector.get(GPU_PRODUCT_LABEL)
        return seed_capacity(product, self.engine.tensor_parallel_size)

    @property
    def scales_to_zero(self) -> bool:
        """Whether the scaler may take this service to zero replicas (the router in front, and 0 as
        minReplicas or as a schedule window's)."""
        a = self.autoscaling
        windows = a.schedule.windows if a.schedule is not None else []
        zero = a.min_replicas == 0 or any(w.min_replicas == 0 for w in windows)
        return a.enabled and zero and self.routing.router is not None

    @property
    def gpus_per_replica(self) -> int:
        return self.engine.tensor_parallel_size if self.resources.gpus is None else self.resources.gpus

    @property
    def served_model_name(self) -> str:
        return self.model.served_model_name or self.model.name


# --------------------------------------------------------------------------------------------- status


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


def _whole_seconds(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A time in the status: the scaler decides on exact times, the status keeps whole seconds (as metav1.Time).
Timestamp = Annotated[datetime.datetime, PlainSerializer(_whole_seconds, return_type=str, when_used="json")]


class Recommendation(_Model):
    """A run of equal recommendations, from ``since`` until the next entry (or now)."""

    since: Timestamp
    replicas: int


class DemandPeak(_Model):
    at: Timestamp
    work: float


class ModelReading(_Model):
    """SLO mode: what the performance model believes and predicts (``qwen_operator.perf``)."""

    prefill_tokens_per_second: float = Field(description="One replica's prompt tokens per second, fitted.")
    step_floor_seconds: float = Field(description="An engine step's fixed time, fitted.")
    fit_windows: int = Field(description="Windows of vLLM's engine counters the fit has taken.")
    fit_spread_percent: float = Field(
        description="How sure the fit is: the largest standard deviation of its parameters, in % of each."
    )
    load_factor: float = Field(
        description="How much fuller the replicas are than the model says, learned from queue times and "
        "first tokens (1: as predicted)."
    )
    replicas: int | None = Field(
        default=None, description="The fewest replicas predicted to keep the SLO at the load planned for."
    )
    late_percent: float | None = Field(
        default=None, description="The share of first tokens predicted later than the bound there."
    )


class ScalingObservation(_Model):
    """What the last evaluation saw, over the ready pods that reported fresh metrics."""

    ready_replicas: int
    pods_with_data: int
    concurrency: float = Field(description="Requests running + waiting, summed over the pods.")
    waiting: float = Field(description="Requests waiting, summed over the pods.")
    load_per_replica: float | None = Field(default=None, description="concurrency / podsWithData.")
    kv_cache_usage: float | None = Field(default=None, description="Mean KV-cache usage (0-1).")
    prompt_tokens_per_second: float | None = Field(default=None, description="Over the last minute.")
    generation_tokens_per_second: float | None = Field(default=None, description="Over the last minute.")
    ttft_within_slo_percent: float | None = Field(
        default=None, description="SLO mode: the share of the last minute's first tokens within the bound."
    )
    tpot_within_slo_percent: float | None = Field(
        default=None,
        description="SLO mode with a timePerOutputTokenSeconds: the share of the last minute's finished "
        "requests within it.",
    )
    model: ModelReading | None = None


class PerformanceModelState(_Model):
    """SLO mode's performance model as a restart needs it: the step model's fit and the load factor's
    belief (``qwen_operator.perf.sizing.Sizing``)."""

    model_config = ConfigDict(extra="ignore")
    step: list[float] = Field(
        min_length=4,
        max_length=4,
        description="Step seconds: floor, per sequence, per prompt token, per context token.",
    )
    covariance: list[float] = Field(min_length=16, max_length=16, description="The fit's covariance (4 x 4).")
    prior: list[float] = Field(default_factory=list, max_length=4, description="The GPU table's step model.")
    windows: int = Field(default=0, ge=0, description="Windows the fit accepted.")
    rejected: int = Field(default=0, ge=0, description="Windows rejected in a row.")
    likelihood: list[float] = Field(
        default_factory=list, max_length=64, description="The log-likelihood of each load factor on the grid."
    )
    prompt_tokens: float | None = Field(default=None, description="The mean prompt of the last minutes.")
    output_tokens: float | None = Field(default=None, description="The mean output of the last minutes.")


class ScalerState(_Model):
    """What the scaler's windows and cooldowns remember, kept so that a restart does not forget them.
    ``lastScaleUpTime`` is written with every scale-up; the window and ``dataSince`` change with the load
    and are written at most once a minute while the decision holds (a restart is a gap in the data
    anyway, so the window starts again then)."""

    # The fields a status write must not wait for (the cooldown after a scale-up; the idle gaps that
    # decide scale to zero); every other field is written at most once a minute while the decision
    # holds (``status.LAG_TOLERANT_STATE``), a restart losing at most that.
    WRITTEN_AT_ONCE: ClassVar[frozenset[str]] = frozenset({"last_scale_up_time", "idle_gaps"})

    model_config = ConfigDict(extra="ignore")
    last_scale_up_time: Timestamp | None = None
    data_since: Timestamp | None = Field(
        default=None, description="Start of the current unbroken run of metrics (scale-down waits a window)."
    )
    recommendations: list[Recommendation] = Field(
        default_factory=list, max_length=256, description="Recommendations within the stabilization window."
    )
    capacity_scale: float | None = Field(
        default=None,
        description="SLO mode, learned: one replica's capacity at the SLO, as a share of the seed's.",
    )
    demand_level: float | None = Field(
        default=None, description="SLO mode: the smoothed load, in seed replicas."
    )
    demand_trend: float | None = Field(default=None, description="SLO mode: its trend, per second.")
    demand_updated: Timestamp | None = None
    demand_peaks: list[DemandPeak] | None = Field(
        default=None, max_length=30, description="SLO mode: the load's per-minute peaks (30 min)."
    )
    cold_start_seconds: float | None = Field(
        default=None, description="SLO mode: the measured time from pod creation to Ready."
    )
    capacity_carried: float | None = Field(
        default=None, description="SLO mode: the most load a replica carried within the SLO (fading)."
    )
    capacity_failed: float | None = Field(
        default=None, description="SLO mode: the least load a replica failed the SLO under (fading)."
    )
    performance_model: PerformanceModelState | None = None
    last_request_time: Timestamp | None = Field(
        default=None, description="With the router: when a request was last seen (scale to zero)."
    )
    router_arrivals: float | None = Field(
        default=None, description="The router's arrivals counter, summed over its pods, when last read."
    )
    idle_gaps: list[int] | None = Field(
        default=None,
        max_length=64,
        description="The last idle gaps between requests, in seconds (scale to zero weighs them).",
    )


class AutoscalingStatus(_Model):
    """The scaler's last decision and what it saw (for people), and its state (for itself)."""

    model_config = ConfigDict(extra="ignore")
    reason: str | None = None
    message: str | None = None
    recommendation: int | None = Field(default=None, description="Replicas the signals ask for, unlimited.")
    advised_replicas: int | None = Field(
        default=None, description="mode Advisory: the replicas the scaler would have set (within the limits)."
    )
    observation: ScalingObservation | None = None
    state: ScalerState | None = None


Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Invalid"]
PHASES: tuple[str, ...] = get_args(Phase)


class StartupPhases(_Model):
    """Seconds of a pod's cold start, by phase (a phase whose ends the API did not record is absent)."""

    node: float | None = Field(default=None, description="Created to scheduled: waiting for a node.")
    init: float | None = Field(default=None, description="Scheduled to initialized: the init containers.")
    image: float | None = Field(default=None, description="To the engine container's start: the image pull.")
    engine: float | None = Field(
        default=None, description="Container start to Ready: weights, compilation, the server up."
    )
    total: float | None = Field(default=None, description="Created to Ready.")


class StartupSample(StartupPhases):
    pod: str = Field(max_length=253)
    uid: str = Field(max_length=64)
    ready_at: Timestamp


class StartupStatus(_Model):
    """Where the service's pods' cold starts went, from the pods' own timestamps."""

    pods: int = Field(default=0, description="Pods measured since the service was created.")
    last: StartupPhases = Field(default_factory=StartupPhases, description="The latest pod's phases.")
    p90: StartupPhases = Field(
        default_factory=StartupPhases, description="Each phase's 90th percentile over the recent pods."
    )
    startup_probe_seconds: int | None = Field(
        default=None,
        description="The engine's start-up budget the startup probe gives (spec.engine.startupTimeoutSeconds,"
        " raised after a measured start longer than a third of it; never lowered by itself).",
    )
    budget_base: int | None = Field(
        default=None, description="The startupTimeoutSeconds the raised budget was measured against."
    )
    compile_cache_generation: int = Field(
        default=0,
        ge=0,
        description="How many times the operator started vLLM's compile cache afresh (a start failed in"
        " it); each time the pods get a new, empty directory.",
    )
    compile_cache_reset_at: Timestamp | None = Field(default=None, description="When it last did.")
    recent: list[StartupSample] = Field(default_factory=list, max_length=64)


class QwenServiceStatus(_Model):
    model_config = ConfigDict(extra="ignore")
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int | None = Field(default=None, description="Replicas the Deployment has.")
    ready_replicas: int | None = Field(default=None, description="Replicas serving.")
    desired_replicas: int | None = Field(default=None, description="Replicas the operator asks for.")
    last_scale_time: Timestamp | None = Field(default=None, description="When replicas last changed.")
    autoscaling: AutoscalingStatus | None = None
    startup: StartupStatus | None = None
    observed_generation: int | None = None
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI-compatible base URL.")
    chat_ui: str | None = Field(
        default=None, alias="chatUI", description="In-cluster URL of the chat page (spec.chatUI)."
    )
    routing: str | None = Field(
        default=None,
        description="The router the operator made in front of the pods (spec.routing.mode), if any.",
    )
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None


class QwenService(BaseModel):
    """A whole QwenService object, as read from the API or a file."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["serving.qwenops.io/v1alpha1"] = Field(
        default="serving.qwenops.io/v1alpha1", alias="apiVersion"
    )
    kind: Literal["QwenService"] = "QwenService"
    metadata: Metadata
    spec: QwenServiceSpec
    status: QwenServiceStatus = Field(default_factory=QwenServiceStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace
