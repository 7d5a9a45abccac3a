"""Which metrics source answers for a QwenService, and which credentials may go with it.

The rule that keeps credentials where they belong:

- the operator-wide Prometheus (``QWEN_OPERATOR_PROMETHEUS_URL``) gets the operator-wide credentials
  and TLS settings, or the service's own credentials when it names some;
- a service's own ``prometheus.url`` is used only when the operator's admin allows it
  (``QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS``), and then only with that service's own credentials, read
  from Secrets in its own namespace, and its own TLS settings; never with the operator's;
- a URL that is not allowed is never contacted: the service reports ``MetricsAvailable`` False with a
  message that says what to change, and its replicas hold.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from kubernetes_asyncio.client.exceptions import ApiException

from qwen_operator import api
from qwen_operator.kube import SECRETS, Resource, temp_file
from qwen_operator.metrics import MetricsSource, PrometheusConfig, PrometheusSource
from qwen_operator.settings import OperatorSettings

URL_FIELD = "spec.autoscaling.metrics.prometheus.url"


class SourceRefused(Exception):
    """The service's metrics cannot be read as configured; the message says why and what to do."""


class SecretReader(Protocol):
    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None: ...


def _parts(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path with a trailing '/') of an http(s) URL without user info, else None."""
    try:
        split = urlsplit(url.strip())
        port = split.port
    except ValueError:
        return None
    if split.scheme not in ("http", "https") or not split.hostname or "@" in split.netloc:
        return None
    port = port or (443 if split.scheme == "https" else 80)
    return split.scheme, split.hostname.lower().rstrip("."), port, split.path.rstrip("/") + "/"


def same_url(a: str, b: str) -> bool:
    return _parts(a) is not None and _parts(a) == _parts(b)


def url_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether the admin's allow-list admits ``url``. An entry with ``://`` is a URL prefix (same scheme,
    host and port; the path at a segment boundary); any other entry is a host name, ``*.suffix`` for
    every host under a domain."""
    parts = _parts(url)
    if parts is None:
        return False
    scheme, host, port, path = parts
    for entry in (e.strip() for e in allowed):
        if "://" in entry:
            want = _parts(entry)
            if want is not None and want[:3] == (scheme, host, port) and path.startswith(want[3]):
                return True
        elif entry.startswith("*."):
            if host.endswith(entry[1:].lower().rstrip(".")):
                return True
        elif entry and host == entry.lower().rstrip("."):
            return True
    return False


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class Sources:
    """Builds (and reuses) one metrics source per distinct connection."""

    def __init__(self, config: OperatorSettings, pods_source: MetricsSource) -> None:
        self.config = config
        self.pods_source = pods_source
        self.prometheus: dict[PrometheusConfig, PrometheusSource] = {}
        self._ca_files: dict[bytes, str] = {}

    async def for_service(self, svc: api.QwenService, cluster: SecretReader) -> MetricsSource:
        """The source for one service; raises :class:`SourceRefused` with a message for its status."""
        metrics = svc.spec.autoscaling.metrics
        cfg = self.config
        if (metrics.source or cfg.metrics_source) == "pods":
            return self.pods_source
        prom, ns = metrics.prometheus, svc.namespace
        own = prom.url is not None and not same_url(prom.url, cfg.prometheus_url)
        token: str | None
        if own:
            assert prom.url is not None
            if not url_allowed(prom.url, cfg.prometheus_allowed_urls):
                raise SourceRefused(
                    f"{URL_FIELD} {prom.url} is not allowed by this operator, so it was not queried: "
                    "its admin lists the Prometheus URLs a service may name in "
                    "QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS (chart value prometheus.allowedServiceURLs). "
                    "Remove url to use the operator's Prometheus."
                )
            url, token, username, password = prom.url, None, None, None
            ca_file, insecure = None, prom.insecure_skip_verify
            if prom.ca_secret_ref is not None:
                ref = prom.ca_secret_ref
                ca_file = self._ca_file(await self._secret(cluster, ns, ref.name, ref.key))
        else:
            url = cfg.prometheus_url
            token = _read(cfg.prometheus_bearer_token_file) if cfg.prometheus_bearer_token_file else None
            username = cfg.prometheus_username
            password = cfg.prometheus_password.get_secret_value() if cfg.prometheus_password else None
            ca_file, insecure = cfg.prometheus_ca_file, cfg.prometheus_insecure_skip_verify
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
            username = (await self._secret(cluster, ns, basic.name, basic.username_key)).decode()
            password = (await self._secret(cluster, ns, basic.name, basic.password_key)).decode()
        config = PrometheusConfig(
            url=url.rstrip("/"),
            bearer_token=token or None,
            username=username,
            password=password,
            ca_file=ca_file,
            insecure_skip_verify=insecure,
        )
        if config not in self.prometheus:
            self.prometheus[config] = PrometheusSource(
                config, cfg.prometheus_service_label, cfg.metrics_timeout_seconds
            )
        return self.prometheus[config]

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

    def _ca_file(self, pem: bytes) -> str:
        if pem not in self._ca_files:  # one file per distinct CA, not one per evaluation
            self._ca_files[pem] = temp_file(pem, ".crt")
        return self._ca_files[pem]
