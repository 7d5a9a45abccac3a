"""The router between real HTTP clients and real HTTP engines (aiohttp servers on 127.0.0.1 that speak
vLLM's OpenAI API): streaming, requests held through a cold start, retries, limits, cancellation."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from qwen_router.app import Config, Router

pytestmark = pytest.mark.timeout(60)


@dataclass
class Engine:
    """A fake vLLM engine: streams ``chunks`` SSE events ``delay`` seconds apart."""

    chunks: int = 3
    delay: float = 0.05
    status: int = 200
    seen: list[dict[str, Any]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # a request came
    url: str = ""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"body": body, "headers": dict(request.headers), "path": request.path_qs})
        self.reached.set()
        if self.status != 200:
            return web.json_response({"error": {"message": "engine says no"}}, status=self.status)
        if not body.get("stream"):
            await asyncio.sleep(self.delay)
            return web.json_response({"choices": [{"message": {"content": "hello"}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(self.chunks):
                await response.write(f"data: {json.dumps({'i': i})}\n\n".encode())
                await asyncio.sleep(self.delay)
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return response

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "qwen"}]})


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    made: list[Engine] = []
    runners = []
    for _ in range(2):
        engine = Engine()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", engine.completions)
        app.router.add_get("/v1/models", engine.models)
        runner, engine.url = await serve(app)
        runners.append(runner)
        made.append(engine)
    yield made
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def router() -> AsyncIterator[tuple[Router, str]]:
    r = Router(
        Config(
            hold_seconds=2.0, queue_size=2, keepalive_seconds=0.1, max_body_bytes=64 * 1024, body_seconds=0.5
        )
    )
    runner, url = await serve(r.app())
    yield r, url
    await runner.cleanup()


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


CHAT = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_stream_comes_through_as_the_engine_writes_it(
    engines: list[Engine], router: tuple[Router, str]
) -> None:
    r, url = router
    engine = engines[0]
    engine.chunks, engine.delay = 3, 0.3
    r.set_engines({"a": engine.url})
    async with aiohttp.ClientSession() as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with client.post(f"{url}/v1/chat/completions?x=1", json={**CHAT, "stream": True}) as resp:
            assert resp.status == 200
            first = await resp.content.readline()
            assert loop.time() - started < 0.25, "the first event before the engine finished"
            rest = (await resp.read()).decode()
        assert first == b'data: {"i": 0}\n'
        assert rest.count("data:") == 3
        assert rest.endswith("data: [DONE]\n\n")
        async with client.get(f"{url}/v1/models") as resp:
            assert (await resp.json())["data"][0]["id"] == "qwen"
    assert engine.seen[0]["path"] == "/v1/chat/completions?x=1"
    metrics = await _metrics(url)
    assert 'qwen_router_picks_total{reason="least"} 2.0' in metrics, "a new prefix, and /v1/models"


async def test_requests_are_held_until_an_engine_is_ready_with_keepalives_for_streams(
    engines: list[Engine], router: tuple[Router, str]
) -> None:
    r, url = router
    async with aiohttp.ClientSession() as client:
        plain = asyncio.ensure_future(client.post(f"{url}/v1/chat/completions", json=CHAT))
        async with client.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
            assert stream.status == 200, "a held stream starts at once"
            comment = await stream.content.readline()
            assert comment == b": waiting for a ready engine\n"
            await asyncio.sleep(0.3)
            r.set_engines({"a": engines[0].url})  # the cold start ends
            body = (await stream.read()).decode()
        assert body.count('data: {"i"') == 3
        resp = await plain
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == "hello"
        resp.release()
    assert "qwen_router_waiting 0.0" in await _metrics(url)


async def test_a_full_queue_is_told_to_come_back_and_a_long_wait_ends_in_503(
    router: tuple[Router, str],
) -> None:
    _, url = router
    async with aiohttp.ClientSession() as client:
        held = [asyncio.ensure_future(client.post(f"{url}/v1/chat/completions", json=CHAT)) for _ in range(2)]
        await asyncio.sleep(0.2)
        async with client.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "5"
            assert "waiting" in (await resp.json())["error"]["message"]
        for future in held:
            resp = await future
            assert resp.status == 503, "no engine within hold_seconds"
            assert "within 2 s" in (await resp.json())["error"]["message"]
            resp.release()


async def test_an_engine_that_refuses_is_skipped_but_one_that_answered_is_not_retried(
    engines: list[Engine], router: tuple[Router, str]
) -> None:
    r, url = router
    r.set_engines({"gone": refused_url(), "a": engines[0].url})
    r.picker.engines["a"].outstanding = 5  # the least loaded engine is the one that refuses
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{url}/v1/chat/completions", json={"model": "qwen"}) as resp,
    ):
        assert resp.status == 200
    assert "qwen_router_retries_total 1.0" in await _metrics(url)
    engines[0].status = 500
    engines[1].status = 200
    r.set_engines({"a": engines[0].url, "b": engines[1].url})
    r.picker.engines["b"].outstanding = 5
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{url}/v1/chat/completions", json={"model": "qwen"}) as resp,
    ):
        assert resp.status == 500, "the engine may have started on it: not sent again"
    assert not engines[1].seen


async def test_bad_bodies_get_clear_4xx_and_reach_no_engine(
    engines: list[Engine], router: tuple[Router, str]
) -> None:
    r, url = router
    r.set_engines({"a": engines[0].url})
    async with aiohttp.ClientSession() as client:
        for data, status, words in (
            (b"{not json", 400, "not JSON"),
            (b"[1, 2]", 400, "not a JSON object"),
            (b"x" * (65 * 1024), 413, "larger than"),
        ):
            async with client.post(f"{url}/v1/chat/completions", data=data) as resp:
                assert resp.status == status
                assert words in (await resp.json())["error"]["message"]
    assert not engines[0].seen


async def test_a_slow_client_is_cut_off_after_the_body_timeout(router: tuple[Router, str]) -> None:
    _, url = router
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_a_client_that_goes_away_cancels_the_engine_request(
    engines: list[Engine], router: tuple[Router, str]
) -> None:
    r, url = router
    engine = engines[0]
    engine.chunks, engine.delay = 50, 0.1
    r.set_engines({"a": engine.url})
    async with aiohttp.ClientSession() as client:
        resp = await client.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True})
        await resp.content.readline()
        resp.close()  # the client leaves mid-stream
    await asyncio.wait_for(engine.cancelled.wait(), 5)
    await asyncio.sleep(0.1)
    assert r.picker.engines["a"].outstanding == 0


async def test_the_api_key_is_checked_and_the_engines_get_their_own(engines: list[Engine]) -> None:
    r = Router(Config(api_key="client-key", engine_api_key="engine-key"))
    runner, url = await serve(r.app())
    r.set_engines({"a": engines[0].url})
    try:
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 401
            headers = {"Authorization": "Bearer client-key"}
            async with client.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    assert engines[0].seen[-1]["headers"]["Authorization"] == "Bearer engine-key"


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as client, client.get(f"{url}/metrics") as resp:
        return await resp.text()


async def test_a_router_is_ready_once_it_has_listed_the_engines_even_none(router: tuple[Router, str]) -> None:
    """Before its first list of engines a request would wait for the list behind a Service that
    already sends it here: readiness (/readyz) waits for the list, liveness (/healthz) does not."""
    r, url = router
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as before, session.get(f"{url}/healthz") as live:
            assert (before.status, live.status) == (503, 200)
        r.set_engines({})  # listed, none ready: requests are held while one starts
        async with session.get(f"{url}/readyz") as after:
            assert after.status == 200


async def test_the_router_follows_the_engines_endpoint_slices(emulator: Any) -> None:
    """The watcher lists and watches the engines' Service's EndpointSlices on the emulated API: ready
    endpoints only, across slices, as they change."""
    from qwen_router.endpoints import watch_slices
    from qwen_tools.emulator import ENDPOINTSLICES

    seen: list[dict[str, str]] = []
    changed = asyncio.Event()

    def update(engines: dict[str, str]) -> None:
        seen.append(engines)
        changed.set()

    def endpoint_slice(name: str, pods: dict[str, bool]) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": "team",
                "labels": {"kubernetes.io/service-name": "qwen-engines"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}],
            "endpoints": [
                {
                    "addresses": [f"10.0.0.{i}"],
                    "conditions": {"ready": ready},
                    "targetRef": {"kind": "Pod", "name": pod},
                }
                for i, (pod, ready) in enumerate(pods.items())
            ],
        }

    async def next_update() -> dict[str, str]:
        await asyncio.wait_for(changed.wait(), 10)
        changed.clear()
        return seen[-1]

    await emulator.put(ENDPOINTSLICES, endpoint_slice("qwen-engines-a", {"qwen-0": True, "qwen-1": False}))
    other = endpoint_slice("other-a", {"other-0": True})
    other["metadata"]["labels"]["kubernetes.io/service-name"] = "other"
    await emulator.put(ENDPOINTSLICES, other)
    task = asyncio.create_task(watch_slices("team", "qwen-engines", 8000, update, "http", retry_seconds=0.1))
    try:
        assert await next_update() == {"qwen-0": "http://10.0.0.0:8000"}
        await emulator.put(ENDPOINTSLICES, endpoint_slice("qwen-engines-b", {"qwen-2": True}))
        assert await next_update() == {"qwen-0": "http://10.0.0.0:8000", "qwen-2": "http://10.0.0.0:8000"}
        await emulator.remove(ENDPOINTSLICES, "team", "qwen-engines-b")
        assert await next_update() == {"qwen-0": "http://10.0.0.0:8000"}
    finally:
        task.cancel()


async def test_a_held_stream_that_waits_its_time_ends_with_one_error_event() -> None:
    r = Router(Config(hold_seconds=0.3, keepalive_seconds=0.1))
    runner, url = await serve(r.app())
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}) as resp,
        ):
            assert resp.status == 200
            body = (await resp.read()).decode()
        events = [line for line in body.splitlines() if line.startswith("data: {")]
        assert len(events) == 1
        assert json.loads(events[0].removeprefix("data: "))["error"]["type"] == "hold_timeout"
        assert body.endswith("data: [DONE]\n\n")
        metrics = await _metrics(url)
        assert 'qwen_router_rejected_total{why="hold_timeout"} 1.0' in metrics
        assert "unreachable" not in metrics, "nothing more is tried once the answer is given"
    finally:
        await runner.cleanup()


async def test_on_sigterm_the_router_process_finishes_the_streams_it_carries(engines: list[Engine]) -> None:
    """A router pod being replaced (a rollout, a node drain) gets SIGTERM: the stream it is carrying
    still ends with [DONE], new connections are refused, and the process exits cleanly."""
    import signal
    import sys

    engine = engines[0]
    engine.chunks, engine.delay = 20, 0.1  # a 2-second stream
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qwen_router", "--host", "127.0.0.1", "--port", str(port),
        "--engine", f"e={engine.url}", "--grace-seconds", "20",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # until it listens
                try:
                    async with session.get(f"{url}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            async with session.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                assert r.status == 200
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                proc.send_signal(signal.SIGTERM)
                rest = await r.content.read()
            assert rest.rstrip().endswith(b"data: [DONE]"), rest[-200:]
            assert rest.count(b"data: ") == engine.chunks  # the other 19 chunks, then [DONE]
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"{url}/healthz"):
                    pass
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_router_benchmark_runs_and_reports_what_it_measured(tmp_path: Any) -> None:
    """make bench-router at a toy scale (its figures are not asserted: speed is measured by the
    benchmark, not by tests): every request completes both ways, the streams are all open at once (150:
    more than aiohttp's default cap of 100 connections, which the router once had towards its engines),
    and the report names the added latency and the memory."""
    from qwen_tools import benchrouter

    assert benchrouter.main(["--rate", "20", "--seconds", "0.5", "--blocks", "1", "--streams", "150",
                             "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "router.json").read_text())
    for way in ("direct", "router"):
        assert result[way]["completed"] == result[way]["sent"] > 0
    assert result["memory"]["open_at_once"] == 150, "more streams than aiohttp's default 100 connections"
    assert result["memory"]["rss_mb"] > 0
    text = (tmp_path / "router.md").read_text()
    assert "**added**" in text
    assert "150 of 150 streams open at once" in text


async def test_the_router_reads_each_engine_s_kv_cache_and_sends_new_work_to_the_emptier_one() -> None:
    """Two engines with one request each in flight; one reports its KV cache 96% full (the real vLLM
    capture under pressure), the other idle: the next request goes to the idle one."""
    from qwen_router.app import kv_usage
    from tests.conftest import DATA

    pages = {
        "full": (DATA / "vllm-0.32-metrics-kv-pressure.txt").read_text(),
        "empty": (DATA / "vllm-0.32-metrics-idle.txt").read_text(),
    }
    runners, urls = [], {}
    for name, page in pages.items():

        async def metrics(_request: web.Request, page: str = page) -> web.Response:
            return web.Response(text=page)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner, urls[name] = await serve(app)
        runners.append(runner)
    r = Router(Config(kv_seconds=0.05))
    runner, _ = await serve(r.app())
    try:
        r.set_engines({"a-full": urls["full"], "b-empty": urls["empty"]})
        await asyncio.sleep(0.3)
        kv = {name: e.kv for name, e in r.picker.engines.items()}
        assert kv == {"a-full": kv_usage(pages["full"]), "b-empty": 0.0}
        for engine in r.picker.engines.values():
            engine.outstanding = 1
        pick = r.picker.pick()
        assert pick is not None
        assert pick.engine.name == "b-empty"
    finally:
        await runner.cleanup()
        for one in runners:
            await one.cleanup()


async def test_a_long_prompt_not_yet_answered_steers_the_next_request_elsewhere(
    engines: list[Engine], router: tuple[Router, str]
) -> None:
    r, url = router
    slow, streaming = engines
    slow.delay = 1.0  # answers (its first byte) after a second
    streaming.chunks, streaming.delay = 30, 0.1
    async with aiohttp.ClientSession() as client:
        r.set_engines({"b": streaming.url})
        async with client.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}) as one:
            await one.content.readline()  # engine b has answered its prompt: one request, none pending
            r.set_engines({"a": slow.url, "b": streaming.url})
            long_prompt = {**CHAT, "messages": [{"role": "user", "content": "x" * 40_000}]}
            long = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=long_prompt))
            await slow.reached.wait()
            assert r.picker.engines["a"].pending >= 10_000, "its prompt is counted until a byte comes back"
            async with client.post(f"{url}/v1/chat/completions", json=CHAT) as short:
                assert short.status == 200
            assert len(streaming.seen) == 2, "one request each, but b has no prompt waiting: b takes it"
            assert len(slow.seen) == 1
            (await long).release()
        assert r.picker.engines["a"].pending == 0
