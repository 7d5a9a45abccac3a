"""Operator-wide settings, from the environment (prefix ``QWEN_OPERATOR_``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        description="Prometheus the scaler queries (per-service override: spec.autoscaling.prometheusUrl).",
    )
    peering: str | None = Field(
        default=None,
        description="kopf peering name for HA (two operators never act at once); empty: standalone.",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
