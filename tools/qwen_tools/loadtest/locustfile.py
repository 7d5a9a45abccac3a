"""Locust load test for a QwenService's OpenAI-compatible chat API (streaming), headless or web UI.

    locust -f tools/qwen_tools/loadtest/locustfile.py --host http://qwen-chat.llm.svc:8000 \\
        --model Qwen/Qwen2.5-7B-Instruct --plan 2m:4,5m:32,10m:32,5m:4 --headless

Each user sends one streaming chat completion at a time. Locust's table shows, per request:
``TTFT`` (time to first token), ``TPOT`` (time per output token after the first), ``end-to-end``
(with its size column = output tokens); failures carry vLLM's error. At the end it prints TTFT, TPOT
and end-to-end percentiles, output tokens/s and errors, and writes them with ``--summary-json``.

Options of ours (all also as ``LOCUST_QWEN_*`` environment variables; ``locust --help`` lists them):
- ``--model``: the served model name (the QwenService's ``servedModelName``, default its model name).
- ``--workload mix`` (default) or ``--workload trace --trace FILE --speedup 10``: a realistic prompt mix,
  or a replay of an Azure-format trace (``TIMESTAMP,ContextTokens,GeneratedTokens``): each request is
  sent at its arrival time divided by the speed-up, by whichever user is free (use enough users).
- ``--plan 30s:2,2m:12,1m:2``: stepped users (baseline, step-up, peak hold, ...); without it, ``-u``
  users for ``--run-time``.
- ``--stop-file FILE``: stop once FILE exists, letting the requests in flight finish (``--stop-timeout``):
  a run that lasts until something else has happened (the e2e test stops once a new pod has served).
- ``--max-requests N``: stop after N requests. ``--max-prompt-tokens``, ``--max-output-tokens``: clamp
  request sizes to what the model serves.
- ``--endpoints-file FILE``: ``host:port`` lines, re-read when changed, used in turn instead of
  ``--host`` (the e2e test points it at the ready pods).
- ``--records FILE``: one JSON line per request (start, first token, end, tokens, URL, error).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import requests
from locust import LoadTestShape, User, events, task
from locust.env import Environment
from locust.exception import StopUser

from qwen_tools.loadtest import workload


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    group = parser.add_argument_group("qwen-operator load test")
    group.add_argument("--model", default="", env_var="LOCUST_QWEN_MODEL", help="served model name")
    group.add_argument("--workload", choices=["mix", "trace"], default="mix", env_var="LOCUST_QWEN_WORKLOAD")
    group.add_argument("--trace", default="", env_var="LOCUST_QWEN_TRACE", help="Azure-format trace CSV")
    group.add_argument("--speedup", type=float, default=1.0, env_var="LOCUST_QWEN_SPEEDUP")
    group.add_argument("--plan", default="", env_var="LOCUST_QWEN_PLAN", help="stepped users: 30s:2,2m:12")
    group.add_argument("--stop-file", default="", env_var="LOCUST_QWEN_STOP_FILE", help="stop once it exists")
    group.add_argument("--max-requests", type=int, default=0, env_var="LOCUST_QWEN_MAX_REQUESTS")
    group.add_argument("--max-prompt-tokens", type=int, default=0, env_var="LOCUST_QWEN_MAX_PROMPT_TOKENS")
    group.add_argument("--max-output-tokens", type=int, default=0, env_var="LOCUST_QWEN_MAX_OUTPUT_TOKENS")
    group.add_argument("--no-ignore-eos", action="store_true", env_var="LOCUST_QWEN_NO_IGNORE_EOS")
    group.add_argument("--request-timeout", type=float, default=600, env_var="LOCUST_QWEN_REQUEST_TIMEOUT")
    group.add_argument("--endpoints-file", default="", env_var="LOCUST_QWEN_ENDPOINTS_FILE")
    group.add_argument("--records", default="", env_var="LOCUST_QWEN_RECORDS", help="JSON lines per request")
    group.add_argument("--summary-json", default="", env_var="LOCUST_QWEN_SUMMARY_JSON")
    group.add_argument("--seed", type=int, default=0, env_var="LOCUST_QWEN_SEED")
    group.add_argument(
        "--api-key",
        default="",
        env_var="LOCUST_QWEN_API_KEY",
        help="sent as 'Authorization: Bearer KEY' (the QwenService's apiKeySecretRef)",
    )


class _Run:
    """What the users share for one test run (gevent switches only on I/O, so no locks are needed
    between users; the lock guards against Locust's own threads)."""

    def __init__(self, options: Any) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.endpoints = workload.Endpoints(options.host or None, options.endpoints_file or None)
        self.results: list[workload.Result] = []
        self.sent = 0
        self.started = time.time()
        self.lock = threading.Lock()
        self.trace: Any = None
        self.trace_done = False
        try:
            self.plan = workload.parse_plan(options.plan) if options.plan else None
        except ValueError as exc:
            raise SystemExit(f"--plan: {exc}") from None
        self.records = open(options.records, "w") if options.records else None  # noqa: SIM115
        if options.workload == "trace":
            if not options.trace:
                raise SystemExit("--workload trace needs --trace FILE")
            requests_ = workload.from_trace(
                options.trace,
                options.speedup,
                options.max_prompt_tokens or None,
                options.max_output_tokens or None,
                options.seed,
            )
            self.trace = workload.schedule(requests_)

    def next_request(self) -> workload.Request | None:
        with self.lock:
            if self.options.max_requests and self.sent >= self.options.max_requests:
                return None
            self.sent += 1
            if self.trace is not None:
                request: workload.Request | None = next(self.trace, None)
                self.trace_done = request is None
                return request
        return workload.from_mix(
            self.rng, self.options.max_prompt_tokens or None, self.options.max_output_tokens or None
        )

    def done(self, result: workload.Result) -> None:
        with self.lock:
            self.results.append(result)
            if self.records is not None:
                self.records.write(json.dumps(result.record()) + "\n")
                self.records.flush()

    def model(self, base: str, session: requests.Session) -> str:
        """``--model``, or the first model the server lists (vLLM serves one)."""
        if not self.options.model:
            with session.get(f"{base}/v1/models", timeout=30) as response:
                response.raise_for_status()
                self.options.model = response.json()["data"][0]["id"]
        return str(self.options.model)

    @property
    def exhausted(self) -> bool:
        """Every request sent: ``--max-requests`` reached, or the trace replayed to its end."""
        return self.trace_done or (bool(self.options.max_requests) and self.sent >= self.options.max_requests)

    def close(self) -> dict[str, Any]:
        if self.records is not None:
            self.records.close()
        summary = workload.summarize(self.results)
        if self.options.summary_json:
            Path(self.options.summary_json).write_text(json.dumps(summary, indent=2))
        return summary


RUN: _Run | None = None


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _start(environment: Environment, **_: Any) -> None:
    global RUN
    RUN = _Run(environment.parsed_options)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _quit(environment: Environment, **_: Any) -> None:
    if RUN is not None:
        print("\nqwen-operator load test:\n" + workload.format_summary(RUN.close()), flush=True)


class ChatUser(User):
    """One client: a streaming chat completion at a time, back to back (or at trace arrival times)."""

    def on_start(self) -> None:
        self.session = requests.Session()
        key = self.environment.parsed_options.api_key
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.backoff = 0.0  # seconds to wait after a failed request; doubles while they keep failing

    def on_stop(self) -> None:
        self.session.close()

    def _fire(self, name: str, seconds: float, length: int = 0, error: str | None = None) -> None:
        self.environment.events.request.fire(
            request_type="CHAT",
            name=name,
            response_time=seconds * 1000,
            response_length=length,
            exception=RuntimeError(error) if error else None,
            context={},
        )

    @task
    def chat(self) -> None:
        run = RUN
        if run is None:
            return
        request = run.next_request()
        if request is None:
            raise StopUser()
        if request.at is not None:  # trace replay: wait for its arrival time
            delay = run.started + request.at - time.time()
            if delay > 0:
                time.sleep(delay)
        base = run.endpoints.next()
        if base is None:
            self._fire("end-to-end", 0.0, error="no endpoint to send to")
            time.sleep(1)
            return
        options = self.environment.parsed_options
        result = workload.Result(request.kind, base, time.time())
        try:
            payload = request.payload(run.model(base, self.session), not options.no_ignore_eos)
            with self.session.post(
                f"{base}/v1/chat/completions", json=payload, stream=True, timeout=options.request_timeout
            ) as response:
                result.status = response.status_code
                if response.status_code != 200:
                    result.end = time.time()
                    result.error = f"HTTP {response.status_code}: {response.text[:200]}"
                else:
                    workload.read_stream(result, response.iter_lines(), time.time)
        except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
            result.end = time.time()
            result.error = f"{type(exc).__name__}: {exc}"[:300]
        run.done(result)
        # A failing server (401 without the key, 503 while starting) is not hammered: back off from 0.5 s
        # up to 10 s while requests keep failing, and start again at once after a success.
        self.backoff = 0.0 if result.ok else min(10.0, max(0.5, 2 * self.backoff))
        if self.backoff:
            time.sleep(self.backoff)
        if result.ok:
            if result.ttft is not None:
                self._fire("TTFT", result.ttft)
            if result.tpot is not None:
                self._fire("TPOT", result.tpot)
            self._fire("end-to-end", (result.end or result.start) - result.start, result.output_tokens)
        else:
            self._fire("end-to-end", (result.end or result.start) - result.start, error=result.error)


class PlanShape(LoadTestShape):
    """``--plan`` stages; without one, ``-u`` users for ``--run-time`` (Locust's own options)."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        if options is None:
            return None
        if RUN is not None and RUN.exhausted:
            return None  # --stop-timeout lets the requests in flight finish
        if options.stop_file and Path(options.stop_file).exists():
            return None
        elapsed = float(self.get_run_time())  # type: ignore[no-untyped-call]
        plan = RUN.plan if RUN is not None else (workload.parse_plan(options.plan) if options.plan else None)
        if plan:
            users = workload.users_at(plan, elapsed)
            return None if users is None else (users, options.spawn_rate or 100)
        if options.run_time and elapsed >= options.run_time:
            return None
        return (options.num_users or 1, options.spawn_rate or 1)
