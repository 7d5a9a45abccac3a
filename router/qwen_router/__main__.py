"""``qwen-router``: serve the router on a port, in front of a Service's engines or a fixed list."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from qwen_router.app import Config, Router
from qwen_router.endpoints import watch_slices

log = logging.getLogger("qwen_router")


def _engine(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http://HOST:PORT, got {text!r}")
    return name, url.rstrip("/")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-router", description=__doc__)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--service", help="the engines' Service: its EndpointSlices are watched")
    where.add_argument("--engine", action="append", type=_engine, help="NAME=URL of an engine (repeatable)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    p.add_argument(
        "--engine-port", type=int, default=8000, help="the engines' port (when a slice names none)"
    )
    p.add_argument("--engine-port-name", default=None, help="the Service port to use, by name")
    p.add_argument("--hold-seconds", type=float, default=Config.hold_seconds)
    p.add_argument("--queue-size", type=int, default=Config.queue_size)
    p.add_argument("--max-body-bytes", type=int, default=Config.max_body_bytes)
    p.add_argument("--session-header", default=Config.session_header, help="'' for none")
    p.add_argument(
        "--kv-seconds",
        type=float,
        default=Config.kv_seconds,
        help="how often each engine's load and KV-cache usage are read from its /metrics (0: never)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=50.0,
        help="on SIGTERM: stop taking connections, and let the requests in flight finish for this long",
    )
    p.add_argument(
        "--api-key-env", default=None, help="an environment variable holding the key clients must send"
    )
    p.add_argument(
        "--engine-api-key-env",
        default=None,
        help="an environment variable holding the key sent to the engines",
    )
    return p


def _key(name: str | None) -> str | None:
    if not name:
        return None
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"qwen-router: {name} is empty or not set")
    return value


async def serve(args: argparse.Namespace) -> None:
    config = Config(
        hold_seconds=args.hold_seconds,
        queue_size=args.queue_size,
        max_body_bytes=args.max_body_bytes,
        session_header=args.session_header or None,
        kv_seconds=args.kv_seconds,
        api_key=_key(args.api_key_env),
        engine_api_key=_key(args.engine_api_key_env),
    )
    router = Router(config)
    runner = web.AppRunner(router.app(), handler_cancellation=True, shutdown_timeout=args.grace_seconds)
    await runner.setup()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # (no signal handlers on Windows)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await web.TCPSite(runner, args.host, args.port).start()
    watcher = None
    if args.engine:
        router.set_engines(dict(args.engine))
    else:
        watcher = asyncio.create_task(
            watch_slices(
                args.namespace, args.service, args.engine_port, router.set_engines, args.engine_port_name
            )
        )
    try:
        await stop.wait()
        log.info("SIGTERM: finishing the requests in flight (at most %.0f s)", args.grace_seconds)
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
