"""The QwenService API (``serving.qwenops.io/v1alpha1``), defined once.

These pydantic models are the single source of truth: ``qwen_operator.crd`` generates the
CustomResourceDefinition (structural schema, defaults, CEL rules, printer columns) from them, the
renderers consume them, and the README's spec reference is checked against them.

Pure module: no Kubernetes, kopf or Prometheus imports.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

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

# Flags the operator sets itself; repeating them in extraArgs would make two sources of truth.
MANAGED_FLAGS = (
    "model",
    "served-model-name",
    "host",
    "port",
    "api-key",
    "tensor-parallel-size",
    "download-dir",
    "revision",
    "shutdown-timeout",
)
# Environment variables the operator sets itself.
MANAGED_ENV = ("VLLM_API_KEY", "HF_TOKEN", "HF_HOME", "HOME", "USER", "VLLM_NO_USAGE_STATS")

QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


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

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key in the Secret.")


class PVCSource(_Model):
    claim_name: str = Field(
        min_length=1, max_length=253, description="PersistentVolumeClaim holding the weights."
    )
    sub_path: str | None = Field(
        default=None, max_length=1024, description="Folder inside the claim mounted at /models."
    )
    read_only: bool = Field(default=True, description="Mount the claim read-only.")


class HostPathSource(_Model):
    path: str = Field(
        min_length=1, max_length=1024, pattern=r"^/", description="Absolute node path mounted at /models."
    )


class CacheVolume(_Model):
    """Where the Hugging Face cache lives: a PersistentVolumeClaim, or an emptyDir of a size limit."""

    claim_name: str | None = Field(
        default=None, max_length=253, description="PVC for the Hub cache (keeps downloads across restarts)."
    )
    size_limit: str = Field(
        default="100Gi", pattern=QUANTITY_PATTERN, description="emptyDir size limit when no claim is named."
    )


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
    name: str = Field(
        min_length=1,
        max_length=512,
        description=(
            "Hugging Face model id (e.g. Qwen/Qwen2.5-7B-Instruct), or, with a pvc or hostPath source, "
            "a path relative to /models (or absolute)."
        ),
    )
    served_model_name: str | None = Field(
        default=None, max_length=512, description="Name clients send in requests; defaults to model.name."
    )
    source: ModelSource = Field(
        default_factory=_default_source,
        json_schema_extra={"default": {"hub": {}}},
        description="Where the weights come from; defaults to a Hub download.",
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Hub revision (branch, tag or commit)."
    )
    trust_remote_code: bool = Field(default=False, description="Allow custom model code from the Hub.")


# -------------------------------------------------------------------------------------------- engine


class EnvVar(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("!(has(self.value) && has(self.valueFrom))", "env: set value or valueFrom, not both")
        )
    )
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    value_from: dict[str, Any] | None = Field(
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
                "!has(self.extraArgs) || self.extraArgs.all(a, !a.matches('^--("
                + "|".join(MANAGED_FLAGS)
                + ")(=.*)?$'))",
                "extraArgs must not set flags the operator manages: "
                + ", ".join("--" + f for f in MANAGED_FLAGS),
            ),
        )
    )
    image: str = Field(
        default=DEFAULT_VLLM_IMAGE, min_length=1, max_length=512, description="vLLM server image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent")
    image_pull_secrets: list[str] = Field(
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
        pattern=r"^[a-z0-9_-]+$",
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
        default=None, max_length=64, description="--tool-call-parser (hermes for Qwen2.5)."
    )
    shutdown_timeout_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="--shutdown-timeout: how long vLLM drains in-flight requests on SIGTERM.",
    )
    startup_timeout_seconds: int = Field(
        default=1800, ge=60, le=14400, description="How long a pod may take to load the model before restart."
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
        default="nvidia.com/gpu", max_length=253, description="Extended resource name."
    )
    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="CPU request (e.g. '4').")
    memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Memory request and limit (e.g. '32Gi')."
    )
    shared_memory_size: str = Field(
        default="8Gi", pattern=QUANTITY_PATTERN, description="/dev/shm size (memory-backed emptyDir)."
    )


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(default=None, description="A Kubernetes Affinity.")
    runtime_class_name: str | None = Field(default=None, max_length=253)
    priority_class_name: str | None = Field(default=None, max_length=253)
    service_account_name: str | None = Field(default=None, max_length=253)


class SecuritySpec(_Model):
    run_as_user: int = Field(
        default=1000, ge=0, description="UID the server runs as; 0 (root) drops runAsNonRoot."
    )
    read_only_root_filesystem: bool = Field(
        default=True, description="Root filesystem read-only; /tmp and the cache are writable volumes."
    )


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(default="ClusterIP")
    port: int = Field(default=8000, ge=1, le=65535, description="Service port.")


# -------------------------------------------------------------------------------------- autoscaling


GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set on nodes by NVIDIA GPU Feature Discovery
DEFAULT_CONCURRENCY = 24.0
# concurrencyPerReplica tuned in the fleet benchmark on the Azure conversation trace (Qwen2.5-7B, bf16,
# TP 1: 99% of requests with TTFT <= 2 s at the fewest GPU-hours; docs/benchmark.md), by the tokens of
# the GPU product label that identify the card.
TUNED_CONCURRENCY: tuple[tuple[frozenset[str], float], ...] = (
    (frozenset({"L4"}), 32.0),
    (frozenset({"A10G"}), 24.0),
    (frozenset({"A100", "80GB"}), 48.0),
)


def default_concurrency(gpu_product: str | None) -> float:
    """The concurrency target for a GPU product (``NVIDIA-A100-SXM4-80GB``); 24 for any other card."""
    tokens = set((gpu_product or "").upper().split("-"))
    return next((value for need, value in TUNED_CONCURRENCY if need <= tokens), DEFAULT_CONCURRENCY)


class ScalingTargets(_Model):
    concurrency_per_replica: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Requests in flight (running + waiting) one replica should carry. Unset: tuned per GPU "
            "from scheduling.nodeSelector's nvidia.com/gpu.product in the fleet benchmark (Qwen2.5-7B "
            "on the Azure conversation trace: L4 32, A10G 24, A100-80GB 48; docs/benchmark.md), and "
            "24 for other or unnamed GPUs. Load-test your own model."
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
            "requests, which costs recomputation."
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


class BasicAuthSecretRef(_Model):
    """A Secret holding a user name and a password."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    username_key: str = Field(default="username", min_length=1, max_length=253)
    password_key: str = Field(default="password", min_length=1, max_length=253)


class PrometheusSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!(has(self.bearerTokenSecretRef) && has(self.basicAuthSecretRef))",
                "prometheus: set bearerTokenSecretRef or basicAuthSecretRef, not both",
            )
        )
    )
    url: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^https?://",
        description="Overrides the operator-wide Prometheus URL (QWEN_OPERATOR_PROMETHEUS_URL).",
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with a bearer token sent to Prometheus."
    )
    basic_auth_secret_ref: BasicAuthSecretRef | None = Field(
        default=None, description="Secret with a user name and password for Prometheus."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with the PEM CA bundle that signs Prometheus' certificate."
    )
    insecure_skip_verify: bool = Field(default=False, description="Do not verify Prometheus' certificate.")


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


class AutoscalingSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas")
        )
    )
    enabled: bool = Field(default=False, description="Let the operator own the replica count.")
    min_replicas: int = Field(default=1, ge=1, le=1000, description="Never fewer replicas than this.")
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


# ----------------------------------------------------------------------------------------- the spec


class QwenServiceSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.resources.gpus) || self.resources.gpus == 0"
                " || self.resources.gpus % self.engine.tensorParallelSize == 0",
                "resources.gpus must be a multiple of engine.tensorParallelSize",
            )
        )
    )
    model: ModelSpec = Field(description="Which model to serve and where its weights come from.")
    engine: EngineSpec = _section(EngineSpec, "The vLLM server and its flags.")
    resources: ResourcesSpec = _section(ResourcesSpec, "GPUs, CPU and memory per replica.")
    scheduling: SchedulingSpec = _section(SchedulingSpec, "Where the pods may run.")
    security: SecuritySpec = _section(SecuritySpec, "The pods' security context.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with the API key clients must send (vLLM --api-key)."
    )
    service: ServiceSpec = _section(ServiceSpec, "The Service in front of the pods.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas when autoscaling is off.")
    autoscaling: AutoscalingSpec = _section(
        AutoscalingSpec, "Let the operator move replicas between minReplicas and maxReplicas on load."
    )

    def scaling(self) -> AutoscalingSpec:
        """The autoscaling block with its GPU-dependent default filled in: what the scaler decides on."""
        targets = self.autoscaling.targets
        if targets.concurrency_per_replica is not None:
            return self.autoscaling
        product = self.scheduling.node_selector.get(GPU_PRODUCT_LABEL)
        filled = targets.model_copy(update={"concurrency_per_replica": default_concurrency(product)})
        return self.autoscaling.model_copy(update={"targets": filled})

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


class Recommendation(_Model):
    """A run of equal recommendations, from ``since`` until the next entry (or now)."""

    since: datetime.datetime
    replicas: int


class ScalingObservation(_Model):
    """What the last evaluation saw, over the ready pods that reported fresh metrics."""

    ready_replicas: int
    pods_with_data: int
    concurrency: float = Field(description="Requests running + waiting, summed over the pods.")
    waiting: float = Field(description="Requests waiting, summed over the pods.")
    load_per_replica: float | None = Field(default=None, description="concurrency / podsWithData.")
    kv_cache_usage: float | None = Field(default=None, description="Mean KV-cache usage (0-1).")


class AutoscalingStatus(_Model):
    """The scaler's last decision and the state its windows and cooldowns need (survives restarts)."""

    model_config = ConfigDict(extra="ignore")
    reason: str | None = None
    message: str | None = None
    recommendation: int | None = Field(default=None, description="Replicas the signals ask for, unlimited.")
    observation: ScalingObservation | None = None
    last_scale_up_time: datetime.datetime | None = None
    data_since: datetime.datetime | None = Field(
        default=None, description="Start of the current unbroken run of metrics (scale-down waits a window)."
    )
    recommendations: list[Recommendation] = Field(
        default_factory=list, max_length=256, description="Recommendations within the stabilization window."
    )


class QwenServiceStatus(_Model):
    model_config = ConfigDict(extra="ignore")
    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Invalid"] | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int | None = Field(default=None, description="Replicas the Deployment has.")
    ready_replicas: int | None = Field(default=None, description="Replicas serving.")
    desired_replicas: int | None = Field(default=None, description="Replicas the operator asks for.")
    last_scale_time: datetime.datetime | None = Field(default=None, description="When replicas last changed.")
    autoscaling: AutoscalingStatus | None = None
    observed_generation: int | None = None
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI-compatible base URL.")
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
