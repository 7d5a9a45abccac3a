"""Local HTTP endpoints that serve vLLM 0.32's /metrics text (from a real capture) with values we set.

Each endpoint is a real HTTP server on a loopback address (127.0.0.x: Linux routes the whole /8 to lo),
so Prometheus and the pods source scrape them exactly as they would scrape vLLM pods.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qwen_tools.demo import free_port
from tests.conftest import DATA

__all__ = ["free_port"]  # the tests import it from here

TEMPLATE = (DATA / "vllm-0.32-metrics-idle.txt").read_text()
UNDER_LOAD = (DATA / "vllm-0.32-metrics-under-load.txt").read_text()
# The engine's counters and histograms, and its API server's (http_requests_total, ...): a busy pod's
# grow together.
CUMULATIVE = re.compile(r"^((?:vllm:|http_)\S+?(?:_total|_bucket|_count|_sum)(?:\{[^}]*\})?) (\S+)$", re.M)
GAUGES = {
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "kv": "vllm:kv_cache_usage_perc",
}


def render(
    running: float,
    waiting: float,
    kv: float,
    engines: int = 1,
    old_kv_name: bool = False,
    template: str = TEMPLATE,
    counters: float = 1.0,
) -> str:
    """A captured /metrics (idle by default) with the three gauges set (split evenly over ``engines``)
    and every counter and histogram multiplied by ``counters`` (so they grow from scrape to scrape)."""
    text = template
    if counters != 1.0:
        text = CUMULATIVE.sub(lambda m: f"{m[1]} {float(m[2]) * counters}", text)
    values = {"running": running / engines, "waiting": waiting / engines, "kv": kv}
    for key, metric in GAUGES.items():
        pattern = re.compile(rf"^{re.escape(metric)}\{{(?P<labels>[^}}]*)\}} \S+$", re.M)
        match = pattern.search(text)
        assert match, f"{metric} not in the capture"
        labels = match["labels"]
        lines = [
            metric + "{" + labels.replace('engine="0"', f'engine="{e}"') + "} " + str(values[key])
            for e in range(engines)
        ]
        text = pattern.sub("\n".join(lines), text, count=1)
    if old_kv_name:  # vLLM < 0.12 named the KV gauge differently
        text = text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    return text


@dataclass
class Load:
    running: float = 0
    waiting: float = 0
    kv: float = 0
    engines: int = 1
    old_kv_name: bool = False
    mode: str = "ok"  # ok, html, nan, slow, error, redirect (to ``location``), garbage, huge, announced
    busy: bool = False  # serve the under-load capture, its counters growing with every scrape
    location: str = ""  # where mode "redirect" sends the client


GARBAGE = 'vllm:num_requests_running{model_name="SECRET-FROM-THE-POD" 1\n'
HUGE_MIB = 64  # mode "huge" streams this much (no Content-Length); "announced" only says it would


class FakeVLLM:
    """One vLLM pod's /metrics on ``host:port``; change ``load`` at any time."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.load = Load()
        self.scrapes = 0
        self.sent = 0  # bytes of the last "huge" answer the client read before it hung up
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _huge(self, announce: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                if announce:
                    self.send_header("Content-Length", str(HUGE_MIB * 1024 * 1024))
                self.end_headers()
                line = b'vllm:num_requests_running{model_name="m",engine="0"} 1\n' * 1000
                owner.sent = 0
                try:
                    while owner.sent < HUGE_MIB * 1024 * 1024:
                        self.wfile.write(line)
                        owner.sent += len(line)
                except OSError:  # the client hung up
                    pass
                self.close_connection = True

            def do_GET(self) -> None:
                owner.scrapes += 1
                load = owner.load
                if load.mode == "slow":
                    time.sleep(3)
                if load.mode == "error":
                    self.send_error(500)
                    return
                if load.mode in ("huge", "announced"):
                    self._huge(load.mode == "announced")
                    return
                if load.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", load.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if load.mode == "html":
                    body = b"<html><body>Bad Gateway</body></html>"
                    ctype = "text/html"
                elif load.mode == "garbage":
                    body, ctype = GARBAGE.encode(), "text/plain; version=0.0.4"
                elif load.mode == "nan":
                    body = render(float("nan"), float("nan"), float("nan")).encode()
                    ctype = "text/plain; version=0.0.4"
                else:
                    body = render(
                        load.running,
                        load.waiting,
                        load.kv,
                        load.engines,
                        load.old_kv_name,
                        UNDER_LOAD if load.busy else TEMPLATE,
                        float(owner.scrapes) if load.busy else 1.0,
                    ).encode()
                    ctype = "text/plain; version=0.0.4"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set(self, running: float = 0, waiting: float = 0, kv: float = 0, **kw: Any) -> None:
        self.load = Load(running, waiting, kv, **kw)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SECRET_BODY = b"TOP-SECRET-ANSWER-BODY"


class FakePrometheusAPI:
    """Something at a Prometheus URL: it misbehaves (answers HTML, or too slowly), or, in mode
    ``record``, answers every query with an empty result and records who asked with what credentials
    (``seen``: the path and the Authorization header of each request, with the time it came).

    More modes: ``forbidden`` (HTTP 403 with :data:`SECRET_BODY`), ``redirect`` (307 to ``location``),
    ``trickle`` (200, then one byte every half second for as long as the client listens)."""

    def __init__(self, mode: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.mode = mode
        self.location = ""
        self.seen: list[tuple[str, str | None]] = []
        self.times: list[float] = []
        self.stopped = threading.Event()
        self.vllm = FakeVLLM(host, port)  # reuse the server; its handler is replaced below
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _trickle(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    while not owner.stopped.wait(0.5):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:  # the client gave up
                    pass
                self.close_connection = True

            def do_GET(self) -> None:
                owner.seen.append((self.path, self.headers.get("Authorization")))
                owner.times.append(time.monotonic())
                if owner.mode == "trickle":
                    self._trickle()
                    return
                if owner.mode == "slow":
                    time.sleep(3)
                status, kind = 200, "text/html"
                body = b"<html><head><title>502 Bad Gateway</title></head></html>"
                if owner.mode == "record":
                    body, kind = (
                        b'{"status":"success","data":{"resultType":"vector","result":[]}}',
                        "application/json",
                    )
                elif owner.mode == "forbidden":
                    status, body, kind = 403, SECRET_BODY, "text/plain"
                self.send_response(307 if owner.mode == "redirect" else status)
                if owner.mode == "redirect":
                    self.send_header("Location", owner.location)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.vllm.server.RequestHandlerClass = Handler
        self.url = f"http://{self.vllm.address}"

    def close(self) -> None:
        self.stopped.set()
        self.vllm.close()
