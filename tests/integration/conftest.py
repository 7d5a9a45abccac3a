"""The real kopf operator, in the test's event loop, against the kmock emulator over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest

from qwen_operator import kube
from qwen_tools.emulator import DEPLOY, EVENTS, PODS, QSVC, SERVICE, Emulator, install, start_operator
from tests.prom import Prometheus

__all__ = ["DEPLOY", "EVENTS", "PODS", "QSVC", "SERVICE"]


@pytest.fixture
async def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Emulator]:
    async with Emulator() as handler, kmock.Server(handler) as server:
        path = await install(handler, str(server.url), tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(path))
        yield handler


# Operator settings for the tests unless a test set its own: no /metrics port of its own (the tests
# scrape the operator's registry directly), a fast scaler tick, and pods as the metrics source.
OPERATOR_ENV = {
    "QWEN_OPERATOR_METRICS_PORT": "0",
    "QWEN_OPERATOR_SCALER_TICK_SECONDS": "0.2",
    "QWEN_OPERATOR_METRICS_SOURCE": "pods",
}


@pytest.fixture
async def operator(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncio.Task[None]]:
    for key, value in OPERATOR_ENV.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)

    settings = kopf.OperatorSettings()
    settings.queueing.idle_timeout = 0.5  # per-object workers exit sooner, so the operator stops sooner
    task, stop = await start_operator(settings, 10)
    yield task
    assert not task.done(), "the operator stopped before the test ended"
    stop.set()  # kopf ends its task cancelled on a stop flag; anything else is a crash
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 15)
    assert task.cancelled() or task.exception() is None, f"the operator crashed: {task.exception()!r}"
    # Every call the operator made is one its RBAC grants (the chart's rules come from kube.API_CALLS).
    granted = {(c.group, c.resource, verb) for c in kube.API_CALLS for verb in c.verbs}
    assert emulator.audit, "the audit saw no API calls"
    assert emulator.audit <= granted, f"calls the RBAC does not grant: {sorted(emulator.audit - granted)}"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus server on 127.0.0.1 for this test (tests/prom.py)."""
    prom = Prometheus(tmp_path)
    prom.start()
    yield prom
    prom.stop()


async def eventually(check: Callable[[], Any], within: float = 10, what: str = "condition") -> Any:
    """Poll until ``check()`` returns something truthy (an assertion a user would wait for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


Wait = Callable[..., Awaitable[Any]]
