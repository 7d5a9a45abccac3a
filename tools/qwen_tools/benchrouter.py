"""``make bench-router``: what the router (router/, ``qwen-router``) adds to a request, and what it holds
in memory, measured in one run on this machine.

Three processes on 127.0.0.1: a stand-in engine (streams ``CHUNKS`` server-sent events per request,
``INTERVAL`` s apart, as vLLM's OpenAI server does), the real router in front of it (``python -m
qwen_router``, pinned to one core), and this process as the client (open-loop Poisson arrivals).

- **Added latency**: the same streaming requests at ``--rate`` per second, alternately straight to the
  engine and through the router, in blocks (ABAB...) so that drift hits both; per request the time
  to the first event and to the last. Added = through the router minus direct, at p50 and p99.
- **Memory**: ``--streams`` streams held open through the router at once (one event a second); the
  router's resident memory (``VmRSS``) once all are open, and its peak (``VmHWM``).

Targets (issue 33): p50 under 1 ms and p99 under 5 ms added at 200 streaming requests/s on one core;
under 150 MB at 2,000 concurrent streams. Results: ``bench/results/router.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

CHUNKS = 8  # events per request
INTERVAL = 0.01  # s between events (a fast decode step)
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}


# ------------------------------------------------------------------------------------ the engine


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    chunks = int(body.get("max_tokens") or CHUNKS)
    interval = float(request.headers.get("x-bench-interval", INTERVAL))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):  # the client left (the memory test's end)
        for i in range(chunks):
            await response.write(f'data: {{"choices":[{{"delta":{{"content":"t{i}"}}}}]}}\n\n'.encode())
            await asyncio.sleep(interval)
        await response.write(b"data: [DONE]\n\n")
    return response


def serve_engine(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


# ------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(cores: set[int]) -> Any:
    def pin() -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, cores)

    return pin


async def _up(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextlib.asynccontextmanager
async def processes(router_core: int, others: set[int]) -> AsyncIterator[tuple[str, str, int]]:
    """The engine (on ``others``) and the router (on ``router_core``): their URLs and the router's pid."""
    engine_port, router_port = free_port(), free_port()
    engine = subprocess.Popen(  # noqa: ASYNC220  (returns at once; the engine runs apart)
        [sys.executable, "-m", "qwen_tools.benchrouter", "engine", "--port", str(engine_port)],
        preexec_fn=_pinned(others),
    )
    router = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "qwen_router", "--host", "127.0.0.1", "--port", str(router_port),
         "--engine", f"e=http://127.0.0.1:{engine_port}", "--queue-size", "100000"],
        preexec_fn=_pinned({router_core}),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        engine_url, router_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{router_port}"
        await _up(f"{engine_url}/v1/models")
        await _up(f"{router_url}/healthz")
        yield engine_url, router_url, router.pid
    finally:
        for proc in (router, engine):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------------------ the client


async def one(session: aiohttp.ClientSession, url: str, out: list[tuple[float, float]], **kw: Any) -> None:
    started = time.perf_counter()
    first = None
    async with session.post(f"{url}/v1/chat/completions", json=BODY, **kw) as r:
        async for line in r.content:
            if first is None and line.startswith(b"data: "):
                first = time.perf_counter() - started
    if r.status == 200 and first is not None:
        out.append((first, time.perf_counter() - started))


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float, rng: random.Random
) -> tuple[list[tuple[float, float]], int]:
    """Poisson arrivals at ``rate`` for ``seconds``; returns the completed requests' (first, last) and
    how many were sent."""
    out: list[tuple[float, float]] = []
    tasks = []
    start = time.perf_counter()
    at = 0.0
    while at < seconds:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(session, url, out)))
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks, return_exceptions=True)
    return out, len(tasks)


def _q(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def _ms(x: float) -> float:
    return round(1000 * x, 3)


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def bench(rate: float, seconds: float, blocks: int, streams: int, seed: int) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    router_core, others = cores[0], set(cores[1:]) or {cores[0]}
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, others)
    rng = random.Random(seed)
    result: dict[str, Any] = {
        "rate_per_second": rate,
        "seconds": seconds * blocks,
        "chunks_per_request": CHUNKS,
        "chunk_interval_seconds": INTERVAL,
        "cores": len(cores),
        "router_core": router_core,
    }
    async with processes(router_core, others) as (engine, router, pid):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await open_loop(session, router, rate, 2, rng)  # warm-up, not scored
            await open_loop(session, engine, rate, 2, rng)
            got: dict[str, list[tuple[float, float]]] = {"direct": [], "router": []}
            sent = {"direct": 0, "router": 0}
            for block in range(2 * blocks):
                name = ("direct", "router")[block % 2]
                done, n = await open_loop(session, (engine, router)[block % 2], rate, seconds, rng)
                got[name] += done
                sent[name] += n
        for name, done in got.items():
            first, last = [d[0] for d in done], [d[1] for d in done]
            result[name] = {
                "sent": sent[name],
                "completed": len(done),
                "first_event_ms": {"p50": _ms(_q(first, 0.5)), "p99": _ms(_q(first, 0.99))},
                "last_event_ms": {"p50": _ms(_q(last, 0.5)), "p99": _ms(_q(last, 0.99))},
            }
        for what in ("first_event_ms", "last_event_ms"):
            result[f"added_{what}"] = {
                q: round(result["router"][what][q] - result["direct"][what][q], 3) for q in ("p50", "p99")
            }
        result["memory"] = await held_streams(router, pid, streams)
    return result


async def held_streams(router: str, pid: int, streams: int) -> dict[str, Any]:
    """``streams`` slow streams open through the router at once: its memory then."""
    idle_rss, _ = _rss_mb(pid)
    opened = asyncio.Event()
    count = 0

    async def hold(session: aiohttp.ClientSession) -> None:
        nonlocal count
        body = {**BODY, "max_tokens": 30}
        headers = {"x-bench-interval": "1"}
        async with session.post(f"{router}/v1/chat/completions", json=body, headers=headers) as r:
            first = True
            async for _line in r.content:
                if first:
                    first, count = False, count + 1
                    if count == streams:
                        opened.set()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(hold(session)) for _ in range(streams)]
        try:
            await asyncio.wait_for(opened.wait(), 30)
            await asyncio.sleep(2)
            rss, peak = _rss_mb(pid)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": streams,
        "open_at_once": count,
        "rss_idle_mb": round(idle_rss, 1),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
    }


def report(r: dict[str, Any]) -> str:
    d, via = r["direct"], r["router"]
    add_first, add_last, mem = r["added_first_event_ms"], r["added_last_event_ms"], r["memory"]
    return "\n".join(
        [
            "# The router's overhead (`make bench-router`)",
            "",
            f"{r['rate_per_second']:g} streaming requests/s (Poisson), {r['chunks_per_request']} events "
            f"each {r['chunk_interval_seconds'] * 1000:g} ms apart, {r['seconds']:g} s each way in "
            f"alternating blocks; the router pinned to one core of {r['cores']}, the engine stand-in and "
            "the client on the other(s). One run; the figures are this machine's.",
            "",
            "| | sent | completed | first event p50 | p99 | last event p50 | p99 |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {x['sent']} | {x['completed']} | {x['first_event_ms']['p50']} ms | "
                f"{x['first_event_ms']['p99']} ms | {x['last_event_ms']['p50']} ms | "
                f"{x['last_event_ms']['p99']} ms |"
                for name, x in (("direct", d), ("through the router", via))
            ),
            f"| **added** | | | **{add_first['p50']} ms** | **{add_first['p99']} ms** | {add_last['p50']} ms "
            f"| {add_last['p99']} ms |",
            "",
            f"Memory: {mem['open_at_once']} of {mem['streams']} streams open at once through the router: "
            f"{mem['rss_mb']} MB resident (peak {mem['peak_rss_mb']} MB; {mem['rss_idle_mb']} MB idle).",
            "",
            "Targets (issue 33): p50 < 1 ms and p99 < 5 ms added to the first event; "
            "< 150 MB at 2,000 streams.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="qwen_tools.benchrouter", description=__doc__)
    sub = p.add_subparsers(dest="cmd")
    eng = sub.add_parser("engine")
    eng.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=10, help="per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks each way")
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    if args.cmd == "engine":
        serve_engine(args.port)
        return 0
    result = asyncio.run(bench(args.rate, args.seconds, args.blocks, args.streams, args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "router.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (out / "router.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
