"""No credential reaches a URL it does not belong to (a real kopf operator, real HTTP listeners).

The operator is configured with operator-wide Prometheus credentials, pointed at one listener (the
admin's Prometheus). QwenServices name another listener as their own Prometheus. Each listener records
every request it gets and the Authorization header that came with it.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_tools.emulator import SECRETS, Emulator
from tests.fakevllm import FakePrometheusAPI
from tests.integration.conftest import QSVC, eventually
from tests.integration.test_operator import NS, condition, qsvc

pytestmark = pytest.mark.integration

OPERATOR_TOKEN = "operator-wide-token"
OPERATOR_BASIC = "Basic " + base64.b64encode(b"op-user:op-password").decode()
SERVICE_TOKEN = "the-service-s-own-token"


@pytest.fixture
def listeners() -> Iterator[tuple[FakePrometheusAPI, FakePrometheusAPI]]:
    """(the operator-wide Prometheus, a URL a QwenService names)."""
    admins, services = FakePrometheusAPI("record"), FakePrometheusAPI("record")
    yield admins, services
    admins.close()
    services.close()


@pytest.fixture
def configured(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    listeners: tuple[FakePrometheusAPI, FakePrometheusAPI],
) -> tuple[str, FakePrometheusAPI, FakePrometheusAPI]:
    """Operator-wide settings, set before the operator starts: its credentials (bearer or basic), and
    whether the admin allows the services' listener. Gives (auth, admin's listener, services' one)."""
    auth, allow = request.param
    admins, services = listeners
    monkeypatch.setenv("QWEN_OPERATOR_METRICS_SOURCE", "prometheus")
    monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_URL", admins.url)
    monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS", f"{services.url}/" if allow else "")
    if auth == "bearer":
        token = tmp_path / "token"
        token.write_text(OPERATOR_TOKEN)
        monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_BEARER_TOKEN_FILE", str(token))
    else:
        monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_USERNAME", "op-user")
        monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_PASSWORD", "op-password")
    return auth, admins, services


def autoscaled(name: str, prometheus: dict[str, Any]) -> dict[str, Any]:
    return qsvc(
        name,
        autoscaling={
            "enabled": True,
            "evaluationIntervalSeconds": 1,
            "metrics": {"source": "prometheus", "prometheus": prometheus},
        },
    )


def operator_credential(auth: str) -> str:
    return f"Bearer {OPERATOR_TOKEN}" if auth == "bearer" else OPERATOR_BASIC


@pytest.mark.parametrize("configured", [("bearer", False), ("basic", False)], indirect=True)
async def test_a_url_the_admin_did_not_allow_is_never_contacted(
    configured: tuple[str, FakePrometheusAPI, FakePrometheusAPI], emulator: Emulator, operator: Any
) -> None:
    auth, admins, services = configured
    await emulator.put(QSVC, autoscaled("leaky", {"url": services.url}))
    await emulator.put(QSVC, autoscaled("plain", {}))

    def refused() -> dict[str, Any] | None:
        cond = condition(emulator.get(QSVC, NS, "leaky"), "MetricsAvailable")
        return cond if cond and "is not allowed by this operator" in cond["message"] else None

    cond = await eventually(refused, within=15, what="the leaky service told why its URL is refused")
    assert cond["status"] == "False"
    assert "QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS" in cond["message"]
    await eventually(lambda: admins.seen, within=10, what="the plain service's queries")
    await asyncio.sleep(1.5)  # more evaluations of both
    assert services.seen == [], "a URL the admin did not allow was contacted"
    assert {header for _, header in admins.seen} == {operator_credential(auth)}


@pytest.mark.parametrize("configured", [("bearer", True), ("basic", True)], indirect=True)
async def test_an_allowed_service_url_gets_only_that_service_s_own_credentials(
    configured: tuple[str, FakePrometheusAPI, FakePrometheusAPI], emulator: Emulator, operator: Any
) -> None:
    auth, admins, services = configured
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "team-prom", "namespace": NS},
        "data": {"token": base64.b64encode(SERVICE_TOKEN.encode()).decode()},
    }
    await emulator.put(SECRETS, secret)
    own = {"url": services.url, "bearerTokenSecretRef": {"name": "team-prom", "key": "token"}}
    await emulator.put(QSVC, autoscaled("with-token", own))
    await emulator.put(QSVC, autoscaled("anonymous", {"url": services.url, "insecureSkipVerify": True}))
    await emulator.put(QSVC, autoscaled("plain", {}))

    await eventually(
        lambda: {h for _, h in services.seen} >= {f"Bearer {SERVICE_TOKEN}", None},
        within=15,
        what="queries from both services that name the allowed URL",
    )
    await eventually(lambda: admins.seen, within=10, what="the plain service's queries")
    await asyncio.sleep(1.5)
    assert {h for _, h in services.seen} == {f"Bearer {SERVICE_TOKEN}", None}, "operator credentials leaked"
    assert {h for _, h in admins.seen} == {operator_credential(auth)}
    for name in ("with-token", "anonymous", "plain"):
        cond = condition(emulator.get(QSVC, NS, name), "MetricsAvailable")
        assert cond is not None
        assert "not allowed" not in cond["message"]
