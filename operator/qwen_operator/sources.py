"""Which metrics source answers for a QwenService, and which credentials may go with it.

The rule that keeps credentials where they belong:

- the operator-wide Prometheus (``QWEN_OPERATOR_PROMETHEUS_URL``) gets the operator-wide credentials
  and TLS settings, or the service's own credentials when it names some;
- a service's own ``prometheus.url`` is used only when the operator's admin allows it
  (``QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS``), and then only with that service's own credentials, read
  from Secrets in its own namespace, and its own TLS settings; never with the operator's;
- a URL that is not allowed is never contacted: the service reports ``MetricsAvailable`` False with a
  message that says what to change, and its replicas hold. "Allowed" is judged on the URL as the
  operator parses it once (:mod:`qwen_operator.urls`), and the request goes to that parse, never to
  a second reading of the text; an entry of the list may be meant for one namespace only.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes_asyncio.client.exceptions import ApiException

from qwen_operator import api, urls
from qwen_operator.kube import SECRETS, Resource
from qwen_operator.metrics import MetricsSource, PrometheusConfig, PrometheusSource
from qwen_operator.settings import OperatorSettings

URL_FIELD = "spec.autoscaling.metrics.prometheus.url"
# A Prometheus connection no evaluation asked for in this long is closed and forgotten (its URL or its
# credentials changed, or its services were deleted).
IDLE_SOURCE_SECONDS = 900.0


class SourceRefused(Exception):
    """The service's metrics cannot be read as configured; the message says why and what to do."""


class SecretReader(Protocol):
    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None: ...


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class Sources:
    """Builds (and reuses) one metrics source per distinct connection."""

    def __init__(
        self,
        config: OperatorSettings,
        pods_source: MetricsSource,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.pods_source = pods_source
        self.monotonic = monotonic
        self.prometheus: dict[PrometheusConfig, PrometheusSource] = {}
        self.used: dict[PrometheusConfig, float] = {}  # when an evaluation last asked for each
        self.operator_endpoint = urls.parse(config.prometheus_url)
        self.allow = urls.rules(config.prometheus_allowed_urls)

    def _endpoint(self, url: str, namespace: str) -> urls.Endpoint:
        """A service's own URL, parsed once; SourceRefused unless it is safe and either the operator's
        own URL or on the allow-list."""
        try:
            endpoint = urls.parse(url)
        except urls.UnsafeURL as exc:
            raise SourceRefused(f"{URL_FIELD} was not queried: {exc}") from None
        if endpoint != self.operator_endpoint and not urls.allowed(endpoint, self.allow, namespace):
            raise SourceRefused(
                f"{URL_FIELD} {endpoint} is not allowed by this operator for namespace {namespace}, so it "
                "was not queried: its admin lists the Prometheus URLs a service may name in "
                "QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS (chart values prometheus.allowedServiceURLs and "
                "prometheus.allowedServiceURLsByNamespace). Remove url to use the operator's Prometheus."
            )
        return endpoint

    async def for_service(self, svc: api.QwenService, cluster: SecretReader) -> MetricsSource:
        """The source for one service; raises :class:`SourceRefused` with a message for its status."""
        metrics = svc.spec.autoscaling.metrics
        cfg = self.config
        if (metrics.source or cfg.metrics_source) == "pods":
            return self.pods_source
        prom, ns = metrics.prometheus, svc.namespace
        endpoint = self._endpoint(prom.url, ns) if prom.url is not None else self.operator_endpoint
        token: str | None
        if endpoint != self.operator_endpoint:
            who = f"this service's Prometheus ({endpoint})"
            token, username, password = None, None, None
            ca_file, ca_data, insecure = None, None, prom.insecure_skip_verify
            if prom.ca_secret_ref is not None:
                ref = prom.ca_secret_ref
                ca_data = (await self._secret(cluster, ns, ref.name, ref.key)).decode(errors="replace")
        else:
            who = f"the operator's Prometheus ({endpoint})"
            token = _read(cfg.prometheus_bearer_token_file) if cfg.prometheus_bearer_token_file else None
            username = cfg.prometheus_username
            password = cfg.prometheus_password.get_secret_value() if cfg.prometheus_password else None
            ca_file, ca_data, insecure = cfg.prometheus_ca_file, None, cfg.prometheus_insecure_skip_verify
        if prom.bearer_token_secret_ref is not None:
            ref = prom.bearer_token_secret_ref
            token, username, password = (
                (await self._secret(cluster, ns, ref.name, ref.key)).decode().strip(),
                None,
                None,
            )
        if prom.basic_auth_secret_ref is not None:
            basic = prom.basic_auth_secret_ref
            token = None
            username = _value(await self._secret(cluster, ns, basic.name, basic.username_key))
            password = _value(await self._secret(cluster, ns, basic.name, basic.password_key))
        config = PrometheusConfig(
            endpoint=endpoint,
            bearer_token=token or None,
            username=username,
            password=password,
            ca_file=ca_file,
            ca_data=ca_data,
            insecure_skip_verify=insecure,
        )
        if config not in self.prometheus:
            try:
                source = PrometheusSource(
                    config, cfg.prometheus_service_label, cfg.metrics_timeout_seconds, who=who
                )
            except (OSError, ValueError) as exc:  # a CA bundle that does not load
                raise SourceRefused(f"{who}: its CA bundle cannot be used ({type(exc).__name__})") from None
            self.prometheus[config] = source
        self.used[config] = self.monotonic()
        return self.prometheus[config]

    def forget_idle(self) -> None:
        """Drop the connections no evaluation asked for in IDLE_SOURCE_SECONDS (each evaluation asks
        for its service's source, so a connection in use is never idle that long)."""
        horizon = self.monotonic() - IDLE_SOURCE_SECONDS
        for config in [c for c, at in self.used.items() if at < horizon]:
            del self.used[config]
            source = self.prometheus.pop(config, None)
            if source is not None and source.busy:  # still answering a call: keep it to the end
                self.prometheus[config] = source
                self.used[config] = self.monotonic()

    async def _secret(self, cluster: SecretReader, namespace: str, name: str, key: str) -> bytes:
        """A key of a Secret in the service's own namespace."""
        try:
            secret = await cluster.get(SECRETS, namespace, name)
        except ApiException as exc:
            hint = (
                " (the operator may not read Secrets in this namespace: its admin grants it with the chart's "
                "rbac.prometheusSecrets and rbac.prometheusSecretNamespaces)"
                if exc.status == 403
                else ""
            )
            raise SourceRefused(
                f"cannot read Secret {namespace}/{name} for Prometheus credentials: "
                f"HTTP {exc.status} {exc.reason}{hint}"
            ) from exc
        if secret is None:
            raise SourceRefused(f"Secret {namespace}/{name} (Prometheus credentials) does not exist")
        value = (secret.get("data") or {}).get(key)
        if value is None:
            raise SourceRefused(f"Secret {namespace}/{name} has no key {key!r} (Prometheus credentials)")
        return base64.b64decode(value)


def _value(raw: bytes) -> str:
    """A Secret's value as text, without the line end ``echo`` and editors add."""
    return raw.decode().removesuffix("\n").removesuffix("\r")
