"""Operator-wide settings, from the environment (prefix ``QWEN_OPERATOR_``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qwen_operator import api, leader, render, urls, validation


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_OPERATOR_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch, comma-separated; empty means cluster-wide.",
    )
    resync_seconds: float = Field(
        default=300, gt=0, description="How often every QwenService is reconciled even without changes."
    )
    liveness_endpoint: str | None = Field(
        default="http://0.0.0.0:8080/healthz", description="kopf's liveness probe endpoint; empty to disable."
    )
    metrics_source: Literal["prometheus", "pods"] = Field(
        default="prometheus",
        description="Where the scaler reads load (per service: spec.autoscaling.metrics.source).",
    )
    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        description="Prometheus the scaler queries (per service: spec.autoscaling.metrics.prometheus.url).",
    )
    prometheus_bearer_token_file: str | None = Field(
        default=None, description="File holding a bearer token for Prometheus (e.g. a mounted Secret)."
    )
    prometheus_username: str | None = Field(default=None, description="Basic-auth user for Prometheus.")
    prometheus_password: SecretStr | None = Field(default=None, description="Basic-auth password.")
    prometheus_ca_file: str | None = Field(default=None, description="PEM CA bundle for Prometheus' TLS.")
    prometheus_insecure_skip_verify: bool = Field(default=False, description="Skip TLS verification.")
    prometheus_allowed_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Prometheus URLs a QwenService may name in spec.autoscaling.metrics.prometheus.url, "
            "comma-separated: a URL prefix (https://prom.team-a.svc:9090/) or a host name (prom.example.com, "
            "*.monitoring.svc), each for every namespace or, written NAMESPACE=ENTRY, for that namespace's "
            "services only. Empty: none, every service uses the operator-wide URL. Such a service gets "
            "only its own credentials, never the operator's."
        ),
    )
    chat_ui_image: str = Field(
        default=api.DEFAULT_CHAT_UI_IMAGE,
        min_length=1,
        pattern=r"^[^\s]+$",
        description="The chat page's image for a QwenService whose spec.chatUI.image is unset.",
    )
    router_image: str = Field(
        default=api.DEFAULT_ROUTER_IMAGE,
        min_length=1,
        pattern=r"^[^\s]+$",
        description="The router's image for a QwenService whose spec.routing.builtin.image is unset.",
    )
    endpoint_picker_image: str = Field(
        default=api.DEFAULT_ENDPOINT_PICKER_IMAGE,
        min_length=1,
        pattern=r"^[^\s]+$",
        description=(
            "The endpoint picker's image for a QwenService whose spec.routing.inferencePool."
            "endpointPickerImage is unset."
        ),
    )
    pause_image: str = Field(
        default=api.DEFAULT_PAUSE_IMAGE,
        min_length=1,
        pattern=r"^[^\s]+$",
        description="The container that holds an image pre-pull pod (spec.engine.prePullImage).",
    )
    allow_host_path: bool = Field(
        default=False,
        description="Let a QwenService mount a node path (model.source.hostPath): node filesystem access.",
    )
    allow_root: bool = Field(
        default=False, description="Let a QwenService run vLLM as root (security.runAsUser: 0)."
    )
    prometheus_service_label: str = Field(
        default="serving_qwenops_io_service",
        description="Label on the vLLM series naming the QwenService (what the scrape config maps from "
        "the pod label serving.qwenops.io/service).",
    )
    pod_metrics_port: int = Field(
        default=8000, ge=1, le=65535, description="Port of the vLLM pods' /metrics for the pods source."
    )
    router_metrics_port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="Port of the router pods' /metrics (spec.routing.mode Builtin), read every evaluation.",
    )
    metrics_timeout_seconds: float = Field(
        default=5, gt=0, le=60, description="Deadline for one evaluation's metric queries."
    )
    scaler_tick_seconds: float = Field(
        default=5, gt=0, le=60, description="How often the scaler looks for services due for evaluation."
    )
    status_refresh_seconds: float = Field(
        default=60,
        ge=0,
        description="While a service's scaling decision holds, how often the scaler refreshes the live "
        "figures in its status (message, observed load); a changed decision is written at once.",
    )
    cache_relist_seconds: float = Field(
        default=300,
        gt=0,
        description="How often the scaler lists QwenServices, Deployments and pods again instead of "
        "trusting its watch-fed caches alone (it drops objects whose deletion a reconnecting watch missed).",
    )
    metrics_port: int = Field(
        default=9100, ge=0, le=65535, description="Port of the operator's own /metrics; 0 disables it."
    )
    leader_election_namespace: str | None = Field(
        default=None,
        description="Namespace of the Lease the operator replicas elect a leader on (the chart sets its "
        "own namespace): several replicas run, one acts, another takes over within the lease duration. "
        "Empty: no election, run exactly one replica.",
    )
    leader_election_lease_name: str = Field(
        default="qwen-operator", description="Name of that Lease (one per operator installation)."
    )
    leader_election_identity: str | None = Field(
        default=None,
        description="This replica's name in the Lease (the chart sets the pod name); empty: the host "
        "name and a random suffix.",
    )
    leader_election_lease_seconds: float = Field(
        default=15,
        gt=0,
        description="How long a leader's claim lasts without renewal: the longest a crashed leader "
        "leaves the operator without one.",
    )
    leader_election_renew_deadline_seconds: float = Field(
        default=10,
        gt=0,
        description="A leader that could not renew for this long stops acting (and exits, to rejoin "
        "as a candidate); shorter than the lease, so two never act at once.",
    )
    leader_election_retry_seconds: float = Field(
        default=2, gt=0, description="How often a candidate tries for the Lease and a leader renews it."
    )

    @model_validator(mode="after")
    def _election_timings(self) -> OperatorSettings:
        self.election_timings()  # leader.Timings refuses timings under which two leaders could act
        return self

    def election_timings(self) -> leader.Timings:
        return leader.Timings(
            lease_seconds=self.leader_election_lease_seconds,
            renew_deadline_seconds=self.leader_election_renew_deadline_seconds,
            retry_seconds=self.leader_election_retry_seconds,
        )

    def render_defaults(self) -> render.Defaults:
        """What a spec leaves out, as this operator's admin chose it."""
        return render.Defaults(
            chat_ui_image=self.chat_ui_image,
            router_image=self.router_image,
            endpoint_picker_image=self.endpoint_picker_image,
            pause_image=self.pause_image,
        )

    def policy(self) -> validation.Policy:
        """What QwenServices may ask for beyond the safe defaults."""
        return validation.Policy(allow_host_path=self.allow_host_path, allow_root=self.allow_root)

    @field_validator("namespaces", "prometheus_allowed_urls", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("prometheus_url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        urls.parse(value)  # UnsafeURL is a ValueError: pydantic reports it with the setting's name
        return value

    @field_validator("prometheus_allowed_urls")
    @classmethod
    def _allow_list(cls, value: list[str]) -> list[str]:
        urls.rules(value)
        return value


SETTINGS_START = "<!-- settings:begin -->"
SETTINGS_END = "<!-- settings:end -->"


def settings_markdown() -> str:
    """The operator settings table, generated from the model (the README embeds it)."""
    rows = [SETTINGS_START, "| variable | default | meaning |", "|---|---|---|"]
    for name, info in OperatorSettings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        shown = str(shown).lower() if isinstance(shown, bool) else shown
        text = "(none)" if shown in (None, "", []) else f"`{shown}`"
        rows.append(f"| `QWEN_OPERATOR_{name.upper()}` | {text} | {info.description or ''} |")
    return "\n".join([*rows, SETTINGS_END])


def with_settings(readme: str) -> str:
    """The README with its settings table replaced by the generated one."""
    start, end = readme.index(SETTINGS_START), readme.index(SETTINGS_END) + len(SETTINGS_END)
    return readme[:start] + settings_markdown() + readme[end:]
