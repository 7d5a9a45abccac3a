"""``qwen-operator tune``: one replica's capacity at a latency SLO, fitted from a load test's records
or from a running service's own metrics in Prometheus.

Workflow (docs/autoscaling.md, "SLO mode"): load-test one replica with a stepped plan (the load kit's
``--plan`` and ``--records``), run ``qwen-operator tune --records FILE``, paste the block it prints into
the QwenService. The records are the kit's JSON lines (start, first token, end, prompt and output
tokens, error). Each window of ``--window`` seconds gets its token load (prompt tokens of the requests
whose first token came in it, output tokens of those that ended in it) and its SLO attainment (the
share of the requests started in it whose first token came within the bound; failed requests miss;
with ``--tpot``, a request whose output came slower than that on average misses too).
With ``--prometheus URL --service NAMESPACE/NAME --since 6h`` the windows come from the service's
vLLM metrics instead, with the operator's own queries (deduplicated per engine): the increase of the
token counters and of the time-to-first-token histogram over each window, the load divided by the
pods that reported in it, the attainment estimated inside the histogram's bucket as the scaler does
(``Histogram.share_within_tail``; with ``--tpot``, the lower of that and the share of finished requests
within it, from ``vllm:request_time_per_output_token_seconds``). A running service's range teaches only
up to the busiest load it saw. The capacity is the highest load at which the windows at or below it,
together, met the SLO (a percentile is a share of all requests, not of each window's); the first window
that failed grossly (by twice the SLO's miss allowance) ends the test's useful part: what follows is
overload and its backlog.
The load is in *seed replicas* (prompt tok/s over the GPU's prompt throughput plus generated tok/s over
its generation throughput), and the block states it in each kind of token: the seed's throughputs
scaled by it, which at the test's own mix add up to exactly one replica.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from qwen_operator import urls
from qwen_operator.gpu_targets import seed_capacity
from qwen_operator.metrics import PrometheusConfig, queries
from qwen_operator.traffic import Histogram

MIN_REQUESTS = 20  # a window with fewer requests says nothing about a percentile


@dataclass(frozen=True)
class Window:
    start: float
    requests: int
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    attainment: float
    work: float  # seed replicas, per replica under test


@dataclass(frozen=True)
class Fit:
    windows: tuple[Window, ...]
    capacity: float | None  # seed replicas one replica carries at the SLO
    prompt_tokens_per_second: float | None
    generation_tokens_per_second: float | None
    capped_by: Window | None  # the first window that failed grossly (the overload)


def windows(
    records: Iterable[Mapping[str, Any]],
    bound: float,
    seconds: float,
    seed: tuple[float, float],
    replicas: int = 1,
    tpot_bound: float | None = None,
) -> list[Window]:
    """The load test cut into windows (see the module's docstring)."""
    rows = [r for r in records if r.get("start") is not None]
    if not rows:
        return []
    t0 = min(float(r["start"]) for r in rows)

    def slot(t: Any) -> int:
        return int((float(t) - t0) // seconds)

    started: dict[int, list[bool]] = {}
    prompt: dict[int, float] = {}
    generated: dict[int, float] = {}
    for r in rows:
        ttft = r.get("ttft")
        on_time = bool(r.get("ok", r.get("error") is None)) and ttft is not None and float(ttft) <= bound
        tpot = r.get("tpot")  # None for a single output token: nothing to judge
        if tpot_bound is not None and tpot is not None and float(tpot) > tpot_bound:
            on_time = False
        started.setdefault(slot(r["start"]), []).append(on_time)
        if r.get("first_token") is not None:
            k = slot(r["first_token"])
            prompt[k] = prompt.get(k, 0.0) + float(r.get("prompt_tokens") or 0)
        if r.get("end") is not None:
            k = slot(r["end"])
            generated[k] = generated.get(k, 0.0) + float(r.get("output_tokens") or 0)
    out = []
    for k in sorted(started):
        p, g = prompt.get(k, 0.0) / seconds, generated.get(k, 0.0) / seconds
        work = (p / seed[0] + g / seed[1]) / replicas
        verdicts = started[k]
        out.append(Window(t0 + k * seconds, len(verdicts), p, g, sum(verdicts) / len(verdicts), work))
    return out


DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``6h`` or ``2d``."""
    m = DURATION.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 6h, 2d)")
    return float(m[1]) * UNITS[m[2]]


def from_prometheus(
    answers: Mapping[str, Iterable[Mapping[str, Any]]],
    bound: float,
    seconds: float,
    seed: tuple[float, float],
    tpot_bound: float | None = None,
) -> list[Window]:
    """Windows from range answers (``prompt_tokens``, ``generation_tokens``, ``ttft``, and ``tpot`` with
    a ``tpot_bound``: per pod, each value the increase over the ``seconds`` before its timestamp)."""
    tokens: dict[str, dict[float, dict[tuple[str, str], float]]] = {
        "prompt_tokens": {},
        "generation_tokens": {},
    }
    buckets: dict[str, dict[float, dict[float, float]]] = {"ttft": {}, "tpot": {}}
    for name, series in answers.items():
        for item in series:
            labels = item.get("metric", {})
            pod = (str(labels.get("namespace", "")), str(labels.get("pod", "")))
            le = labels.get("le")
            for at, text in item.get("values", ()):
                value = float(text)
                if not math.isfinite(value) or value < 0:
                    continue
                if name in buckets and le is not None:
                    step = buckets[name].setdefault(float(at), {})
                    step[float(le)] = step.get(float(le), 0.0) + value
                elif name in tokens:
                    tokens[name].setdefault(float(at), {})[pod] = value
    out = []
    for at in sorted(tokens["prompt_tokens"]):
        per_pod = tokens["prompt_tokens"][at]
        ttft = Histogram.of(buckets["ttft"].get(at, {}))
        share = ttft.share_within_tail(bound) if ttft.valid() else None
        if not per_pod or share is None:
            continue
        tpot = Histogram.of(buckets["tpot"].get(at, {}))
        if tpot_bound is not None and tpot.valid() and tpot.count > 0:
            share = min(share, tpot.share_within_tail(tpot_bound) or 0.0)
        p = sum(per_pod.values()) / seconds
        g = sum(tokens["generation_tokens"].get(at, {}).values()) / seconds
        work = (p / seed[0] + g / seed[1]) / len(per_pod)
        out.append(Window(at - seconds, round(ttft.count), p, g, share, work))
    return out


def connect_prometheus(config: PrometheusConfig, timeout: float) -> PrometheusConnect:
    """A range-query client (the operator's own source makes instant queries only)."""
    session = requests.Session()  # PrometheusConnect ignores disable_ssl when given a session
    session.verify = False if config.insecure_skip_verify else (config.ca_file or True)
    session.max_redirects = 0  # never follow Prometheus elsewhere (with or without its credentials)
    session.trust_env = False
    headers = {"Authorization": f"Bearer {config.bearer_token}"} if config.bearer_token else None
    auth = (config.username, config.password or "") if config.username else None
    return PrometheusConnect(
        url=config.url,
        headers=headers,
        retry=Retry(total=0),
        auth=auth,
        session=session,
        timeout=math.ceil(timeout),
    )


def query_prometheus(
    config: PrometheusConfig,
    namespace: str,
    service: str,
    since: float,
    until: float,
    seconds: float,
    service_label: str = "serving_qwenops_io_service",
    tpot: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """The range answers :func:`from_prometheus` reads, one step per window."""
    client = connect_prometheus(config, 30.0)
    match = f'namespace="{namespace}",{service_label}="{service}"'
    found = queries(service_label, f"{seconds:g}s", match)
    start, end = datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC)
    return {
        name: client.custom_query_range(found[name], start_time=start, end_time=end, step=f"{seconds:g}")
        for name in ("prompt_tokens", "generation_tokens", "ttft", *(("tpot",) if tpot else ()))
    }


def fit(found: Sequence[Window], percentile: float, seed: tuple[float, float]) -> Fit:
    """The highest load at which the requests of all windows at or below it, together, met the SLO;
    windows from the first gross failure on (the overload, and the backlog it leaves) are left out."""
    goal = percentile / 100
    usable = [w for w in found if w.requests >= MIN_REQUESTS]
    gross = next((w for w in usable if w.attainment < goal - 2 * (1 - goal)), None)
    before = [w for w in usable if gross is None or w.start < gross.start]
    best: Window | None = None
    met = total = 0.0
    for w in sorted(before, key=lambda w: w.work):
        met += w.attainment * w.requests
        total += w.requests
        if met / total >= goal and w.work > 0:
            best = w
    if best is None:
        return Fit(tuple(found), None, None, None, gross)
    # Stated in each kind of token as the seed's throughput scaled by the load carried: at the test's
    # own mix, prompt/Pcap + generated/Gcap is then exactly one replica's worth.
    return Fit(tuple(found), best.work, seed[0] * best.work, seed[1] * best.work, gross)


def block(result: Fit, bound: float, percentile: float, tpot: float | None = None) -> str:
    """The autoscaling block to paste into a QwenService."""
    lines = [
        "spec:",
        "  autoscaling:",
        "    slo:",
        f"      timeToFirstTokenSeconds: {bound:g}",
        *([f"      timePerOutputTokenSeconds: {tpot:g}"] if tpot is not None else []),
        f"      percentile: {percentile:g}",
    ]
    if result.capacity is not None:
        lines += [
            "      replicaCapacity:",
            f"        promptTokensPerSecond: {result.prompt_tokens_per_second:.0f}",
            f"        generationTokensPerSecond: {result.generation_tokens_per_second:.0f}",
        ]
    return "\n".join(lines)


def report(result: Fit) -> str:
    rows = ["window  requests  prompt tok/s  generated tok/s  load (seed replicas)  within SLO"]
    for w in result.windows:
        mark = "  <- overload: from here on left out" if w is result.capped_by else ""
        rows.append(
            f"{w.start - result.windows[0].start:6.0f}  {w.requests:8d}  {w.prompt_tokens_per_second:12.0f}  "
            f"{w.generation_tokens_per_second:15.0f}  {w.work:20.2f}  {100 * w.attainment:9.2f}%{mark}"
        )
    return "\n".join(rows)


def _found(args: argparse.Namespace, seed: tuple[float, float]) -> list[Window]:
    if args.records:
        path = Path(args.records)
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return windows(records, args.ttft, args.window, seed, args.replicas, args.tpot)
    namespace, _, name = (args.service or "").partition("/")
    if not namespace or not name:
        raise ValueError("--prometheus needs --service NAMESPACE/NAME")
    token = Path(args.bearer_token_file).read_text().strip() if args.bearer_token_file else None
    config = PrometheusConfig(urls.parse(args.prometheus), bearer_token=token, ca_file=args.ca_file)
    until = time.time()
    answers = query_prometheus(
        config, namespace, name, until - args.since, until, args.window, tpot=args.tpot is not None
    )
    found = from_prometheus(answers, args.ttft, args.window, seed, args.tpot)
    if not found:
        raise ValueError(f"Prometheus has no traffic of {args.service} in the last {args.since:g} s")
    return found


def cmd_tune(args: argparse.Namespace) -> int:
    seed = seed_capacity(args.gpu_product)
    try:
        found = _found(args, seed)
    except (OSError, ValueError, PrometheusApiClientException) as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 2
    result = fit(found, args.percentile, seed)
    print(report(result), file=sys.stderr)
    if result.capacity is None or not math.isfinite(result.capacity):
        why = (
            "the lightest windows already missed the SLO"
            if result.capped_by
            else "no window had enough requests"
        )
        print(
            f"tune: no capacity at the SLO: {why} (at least {MIN_REQUESTS} requests per window). Load-test "
            "with lighter steps first, or a longer --window.",
            file=sys.stderr,
        )
        return 1
    print(block(result, args.ttft, args.percentile, args.tpot))
    return 0


def add_tune(sub: Any) -> None:
    t = sub.add_parser(
        "tune",
        help="fit one replica's capacity at a latency SLO from a load test and print the autoscaling block",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--records", help="the load kit's JSON lines (--records)")
    source.add_argument("--prometheus", help="or: the URL of a Prometheus that scrapes the service's pods")
    t.add_argument("--service", help="with --prometheus: NAMESPACE/NAME of the QwenService")
    t.add_argument(
        "--since", type=duration, default=duration("6h"), help="with --prometheus: how far back (30m, 6h, 2d)"
    )
    t.add_argument("--bearer-token-file", help="with --prometheus: a file holding a bearer token")
    t.add_argument("--ca-file", help="with --prometheus: the CA bundle of its TLS certificate")
    t.add_argument("--ttft", type=float, default=2.0, help="the time-to-first-token bound, seconds")
    t.add_argument(
        "--tpot",
        type=float,
        default=None,
        help="optional: a time-per-output-token bound, seconds (mean per request)",
    )
    t.add_argument("--percentile", type=float, default=99.0, help="the share of requests that must meet it")
    t.add_argument("--window", type=float, default=60.0, help="seconds per window")
    t.add_argument("--replicas", type=int, default=1, help="replicas the load test ran against")
    t.add_argument(
        "--gpu-product", default=None, help="nvidia.com/gpu.product of the replica (the seed's mix of tokens)"
    )
    t.set_defaults(func=cmd_tune)
