"""The real kopf operator, in its own thread and event loop, against the kmock emulator over HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest

from qwen_operator import kube
from qwen_tools.emulator import DEPLOY, EVENTS, PODS, QSVC, SERVICE, Emulator, install, run_operator
from tests.prom import Prometheus

__all__ = ["DEPLOY", "EVENTS", "PODS", "QSVC", "SERVICE"]


@pytest.fixture
async def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Emulator]:
    async with Emulator() as handler, kmock.Server(handler) as server:
        path = await install(handler, str(server.url), tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(path))
        yield handler
        await handler.drop_watches()  # else the server waits for its open watch streams on exit


# Operator settings for the tests unless a test set its own: no /metrics port of its own (the tests
# scrape the operator's registry directly), a fast scaler tick, and pods as the metrics source.
OPERATOR_ENV = {
    "QWEN_OPERATOR_METRICS_PORT": "0",
    "QWEN_OPERATOR_SCALER_TICK_SECONDS": "0.2",
    "QWEN_OPERATOR_METRICS_SOURCE": "pods",
}


class OperatorThread:
    """The real operator in its own thread and event loop, as in its own process. (In the test's loop,
    kopf would wait 5 s at every stop for the tasks started after it, the test's own teardown among
    them: it treats every task it did not find at start-up as one of its own.)"""

    def __init__(self, main: Callable[[threading.Event, threading.Event], Awaitable[Any]], name: str) -> None:
        self.stop_flag, self.ready = threading.Event(), threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._main = main
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = asyncio.run(self._main(self.stop_flag, self.ready))
        except asyncio.CancelledError:  # kopf ends cancelled on its stop flag
            pass
        except BaseException as exc:
            self.error = exc

    async def start(self, within: float) -> None:
        self.thread.start()
        if not await asyncio.to_thread(self.ready.wait, within):
            raise AssertionError(f"the operator was not ready within {within} s: {self.error!r}")

    def done(self) -> bool:
        return not self.thread.is_alive()

    async def join(self, within: float) -> None:
        await asyncio.to_thread(self.thread.join, within)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop within {within} s"

    async def stop(self, within: float = 15) -> None:
        self.stop_flag.set()
        await self.join(within)


@pytest.fixture
async def operator(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OperatorThread]:
    for key, value in OPERATOR_ENV.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)

    async def main(stop: threading.Event, ready: threading.Event) -> None:
        settings = kopf.OperatorSettings()
        settings.queueing.idle_timeout = 0.5  # per-object workers exit sooner, so the operator stops sooner
        await run_operator(settings, stop, ready)

    running = OperatorThread(main, "operator")
    await running.start(10)
    yield running
    assert not running.done(), f"the operator stopped before the test ended: {running.error!r}"
    await running.stop()
    assert running.error is None, f"the operator crashed: {running.error!r}"
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
