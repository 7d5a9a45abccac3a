"""The OpenAI-compatible pass-through: every path but the router's own (``/metrics``, ``/healthz``,
``/readyz``) goes to one engine, picked per request (:mod:`.picker`), and its answer streams back as it
comes. Each
engine's requests running and waiting and its KV-cache usage are read from its own /metrics every
``kv_seconds``, for the picker (other router replicas load the same engines).

- While no engine is ready, a request waits in :class:`.hold.Hold` up to ``hold_seconds``; a streaming
  one gets its response headers at once and an SSE comment every ``keepalive_seconds``, so that
  proxies and clients do not give up. A full queue answers 429 with Retry-After; a request that waited
  its time, 503 with Retry-After (or, streaming, an error event).
- A request is retried on another engine only when nothing reached the first (the connection was
  refused or the engine is gone); never once the engine may have started on it.
- Bodies over ``max_body_bytes`` get 413; a body that does not arrive within ``body_seconds`` (a slow
  client), 408; a POST body that is not a JSON object, 400. A client that goes away cancels its
  request (the connection to the engine is closed, and vLLM aborts the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qwen_router.hold import Full, Hold
from qwen_router.picker import CHARS_PER_TOKEN, Pending, Picker, prefix_of

log = logging.getLogger(__name__)

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # vLLM >= 0.12, and before
QUEUE_NAMES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
KV_PAGE_BYTES = 2 * 1024 * 1024  # of an engine's /metrics, at most (vLLM's is ~100 KB)


def _values(text: str, name: str, high: float) -> list[float]:
    """The values of ``name``'s series in a /metrics page, those within 0..``high``."""
    out = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            if 0 <= value <= high:
                out.append(value)
    return out


def kv_usage(text: str) -> float | None:
    """The mean KV-cache usage (0-1) over an engine's series in a /metrics page (the current name
    first), or None when it reports none."""
    for name in KV_NAMES:
        values = _values(text, name, 1.5)
        if values:
            return sum(values) / len(values)
    return None


def queued(text: str) -> float:
    """Requests running and waiting on an engine, summed over its series (0 when it reports none)."""
    return sum(sum(_values(text, name, 1e6)) for name in QUEUE_NAMES)


@dataclass
class Config:
    hold_seconds: float = 300.0  # how long a request may wait for a ready engine
    queue_size: int = 1000  # requests held at most
    keepalive_seconds: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024
    body_seconds: float = 30.0
    retries: int = 2  # other engines tried when nothing reached the first
    connect_seconds: float = 5.0
    retry_after_seconds: int = 5
    api_key: str | None = None  # clients must send it as a bearer token (None: not checked here)
    engine_api_key: str | None = None  # sent to the engines (None: the client's header passes through)
    session_header: str | None = "x-session-id"
    kv_seconds: float = 0.5  # how often each engine's load and KV usage are read from its /metrics (0: never)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.arrivals = Counter("qwen_router_arrivals", "Requests that arrived.", registry=r)
        self.picks = Counter(
            "qwen_router_picks", "Requests sent to an engine, by why it was chosen.", ["reason"], registry=r
        )
        self.rejected = Counter(
            "qwen_router_rejected", "Requests answered by the router itself.", ["why"], registry=r
        )
        self.retries = Counter("qwen_router_retries", "Requests sent again to another engine.", registry=r)
        self.waiting = Gauge("qwen_router_waiting", "Requests waiting for a ready engine.", registry=r)
        self.in_flight = Gauge(
            "qwen_router_in_flight", "Requests outstanding, per engine.", ["engine"], registry=r
        )
        self.ready = Gauge("qwen_router_ready_engines", "Engines ready to take requests.", registry=r)
        self.queue_wait = Histogram(
            "qwen_router_queue_wait_seconds", "Time held for a ready engine.", buckets=SECONDS, registry=r
        )
        self.ttft = Histogram(
            "qwen_router_time_to_first_byte_seconds",
            "Arrival to the engine's first byte, as the client saw it.",
            buckets=SECONDS,
            registry=r,
        )
        self.duration = Histogram(
            "qwen_router_request_seconds", "Arrival to the last byte.", buckets=SECONDS, registry=r
        )


class Router:
    def __init__(self, config: Config | None = None, picker: Picker | None = None) -> None:
        self.config = config or Config()
        self.picker = picker or Picker()
        self.hold = Hold(self.config.queue_size)
        self.metrics = Metrics()
        self._session: aiohttp.ClientSession | None = None
        self._kv_task: asyncio.Task[None] | None = None
        self.listed = False  # the engines were listed once (an empty list too): /readyz answers 200

    # ------------------------------------------------------------------------------ engines

    def set_engines(self, ready: Mapping[str, str]) -> None:
        """The ready engines now (name -> base URL); held requests go as soon as one is ready."""
        self.listed = True
        self.picker.update(ready)
        self.metrics.ready.set(len(self.picker.engines))
        if self.picker.engines:
            self.hold.release()

    # ------------------------------------------------------------------------------ the app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_seconds)
        # No cap on connections to the engines (aiohttp's default is 100 at once): every stream the
        # router carries holds one, and the engines' own batch limits decide what waits.
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, connector=connector)
        if self.config.kv_seconds > 0:
            self._kv_task = asyncio.create_task(self._poll_kv())

    async def _stop(self, _app: web.Application) -> None:
        if self._kv_task is not None:
            self._kv_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._kv_task
        if self._session is not None:
            await self._session.close()

    async def _poll_kv(self) -> None:
        """Every ``kv_seconds``, each ready engine's KV-cache usage from its own /metrics (the picker
        weighs the least loaded by it); an engine that does not answer is taken as unknown."""
        assert self._session is not None
        deadline = aiohttp.ClientTimeout(total=max(0.5, min(2.0, self.config.kv_seconds)))
        while True:
            engines = list(self.picker.engines.values())
            pages = await asyncio.gather(*(self._page_of(e.url, deadline) for e in engines))
            for engine, page in zip(engines, pages, strict=True):
                engine.kv = None if page is None else kv_usage(page)
                engine.reported = 0.0 if page is None else queued(page)
            await asyncio.sleep(self.config.kv_seconds)

    async def _page_of(self, url: str, deadline: aiohttp.ClientTimeout) -> str | None:
        assert self._session is not None
        try:
            async with self._session.get(f"{url}/metrics", timeout=deadline, allow_redirects=False) as r:
                if r.status != 200:
                    return None
                return (await r.content.read(KV_PAGE_BYTES)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _request: web.Request) -> web.Response:
        """Ready once the engines were listed, none ready included (a request is then held while one
        starts): before that, a request would wait for the API client to load and list (about a
        second on a fresh pod) behind a Service that already sends it here."""
        if not self.listed:
            return web.Response(status=503, text="the engines are not listed yet")
        return web.Response(text="ok")

    def _rejected(self, status: int, why: str, message: str) -> dict[str, Any]:
        """A request the router answers itself: counted, and its body in OpenAI's error shape."""
        self.metrics.rejected.labels(why).inc()
        return {"error": {"message": message, "type": why, "code": status}}

    def _error(self, status: int, why: str, message: str, retry: bool = False) -> web.Response:
        headers = {"Retry-After": str(self.config.retry_after_seconds)} if retry else {}
        return web.json_response(self._rejected(status, why, message), status=status, headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        if key is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self.metrics.arrivals.inc()
        if not self._authorized(request):
            return self._error(401, "unauthorized", "a valid API key is required")
        try:
            body = await asyncio.wait_for(request.read(), self.config.body_seconds)
        except TimeoutError:
            return self._error(
                408, "body_timeout", f"the request body did not arrive within {self.config.body_seconds:g} s"
            )
        except web.HTTPRequestEntityTooLarge:
            return self._error(
                413, "too_large", f"the request body is larger than {self.config.max_body_bytes} bytes"
            )
        parsed: dict[str, Any] = {}
        if request.method == "POST" and body:
            try:
                value = json.loads(body)
            except ValueError:
                return self._error(400, "bad_request", "the request body is not JSON")
            if not isinstance(value, dict):
                return self._error(400, "bad_request", "the request body is not a JSON object")
            parsed = value
        streaming = parsed.get("stream") is True
        session = request.headers.get(self.config.session_header) if self.config.session_header else None
        prefix = prefix_of(parsed) if parsed else None
        response: web.StreamResponse | None = None
        if not self.picker.engines:
            response, go = await self._held(request, arrived, streaming)
            if not go:
                assert response is not None
                return response
        self.metrics.queue_wait.observe(time.monotonic() - arrived)
        return await self._forward(request, body, session, prefix, arrived, response)

    async def _held(
        self, request: web.Request, arrived: float, streaming: bool
    ) -> tuple[web.StreamResponse | None, bool]:
        """Wait for a ready engine. Returns whether to go on, with the response already started for a
        streaming request (its keepalive comments sent); or, not to go on, the answer given (an error,
        in a stream already started, or a response of its own)."""
        deadline = arrived + self.config.hold_seconds
        response: web.StreamResponse | None = None
        if streaming:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
        self.metrics.waiting.inc()
        try:
            while not self.picker.engines:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await self.hold.wait(min(left, self.config.keepalive_seconds) if response else left)
                except Full:
                    message = "too many requests are waiting for a ready engine"
                    if response is not None:
                        await self._stream_error(response, 429, "queue_full", message)
                        return response, False
                    return self._error(429, "queue_full", message, retry=True), False
                if response is not None and not self.picker.engines:
                    await response.write(b": waiting for a ready engine\n\n")
        finally:
            self.metrics.waiting.dec()
        if self.picker.engines:
            return response, True
        message = f"no engine became ready within {self.config.hold_seconds:g} s"
        if response is not None:
            await self._stream_error(response, 503, "hold_timeout", message)
            return response, False
        return self._error(503, "hold_timeout", message, retry=True), False

    async def _stream_error(self, response: web.StreamResponse, status: int, why: str, message: str) -> None:
        event = self._rejected(status, why, message)
        await response.write(f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.config.engine_api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.engine_api_key}"
        elif self.config.api_key is not None:
            headers.pop("Authorization", None)  # the router's key is not the engines'
        return headers

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        session: str | None,
        prefix: str | None,
        arrived: float,
        response: web.StreamResponse | None,
    ) -> web.StreamResponse:
        assert self._session is not None
        tried: list[str] = []
        for attempt in range(self.config.retries + 1):
            pick = self.picker.pick(session, prefix, exclude=tried)
            if pick is None:
                break
            engine = pick.engine
            tried.append(engine.name)
            if attempt:
                self.metrics.retries.inc()
            engine.outstanding += 1
            # Its prompt counts as work ahead of the engine's next first token until a byte comes back.
            pending = Pending(engine, len(body) // CHARS_PER_TOKEN)
            self.metrics.in_flight.labels(engine.name).inc()
            try:
                async with self._session.request(
                    request.method, engine.url + request.rel_url.raw_path_qs,
                    data=body or None, headers=self._headers(request), allow_redirects=False,
                ) as upstream:  # fmt: skip
                    self.metrics.picks.labels(pick.reason).inc()
                    return await self._relay(request, upstream, arrived, response, pending)
            except aiohttp.ClientConnectorError as exc:  # nothing reached the engine: safe to try another
                log.info("engine %s unreachable (%s); trying another", engine.name, type(exc).__name__)
                continue
            finally:
                engine.outstanding -= 1
                pending.done()
                self.metrics.in_flight.labels(engine.name).dec()
        message = "no ready engine could be reached"
        if response is not None:
            await self._stream_error(response, 502, "unreachable", message)
            return response
        return self._error(502, "unreachable", message, retry=True)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        arrived: float,
        response: web.StreamResponse | None,
        pending: Pending,
    ) -> web.StreamResponse:
        first = True
        if response is not None and upstream.status >= 400:  # a held stream: its 200 is already sent
            text = (await upstream.content.read(4096)).decode("utf-8", "replace")
            await self._stream_error(response, upstream.status, "engine_error", text)
            return response
        if response is None:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            if first:
                self.metrics.ttft.observe(time.monotonic() - arrived)
                pending.done()
                first = False
            await response.write(chunk)
        await response.write_eof()
        self.metrics.duration.observe(time.monotonic() - arrived)
        return response
