"""``make demo``: the real operator scaling simulated vLLM pods, on an embedded Kubernetes API.

No cluster, GPU or Prometheus: kopf runs the operator's real handlers against kmock's Kubernetes
emulator (in this process, over HTTP). A stand-in for the ReplicaSet and the kubelet backs the
Deployment with simulated vLLM pods (``qwen_tools.sim``), each serving vLLM's ``/metrics`` on its
own loopback address, which the operator scrapes (the ``pods`` metrics source). A slice of the real
Azure conversation trace is replayed ``--speed`` times faster than real time, quiet, then busy, then
quiet again (its own requests, a third of them kept in the quiet parts). The QwenService is the
recommended one (SLO mode), and the operator's scaler runs on the simulation's clock, so its windows,
cooldowns and time constants see what they would see in a cluster, only faster: it scales up as the
load rises and down once it has stayed low.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import logging
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from qwen_operator import api, clock, labels
from qwen_operator.gpu_targets import GPU_PRODUCT_LABEL
from qwen_operator.objects import parse_time, rfc3339
from qwen_tools.sim import report, score, trace
from qwen_tools.sim.cluster import Cluster, Pod, Settings
from qwen_tools.sim.engine import Engine
from qwen_tools.sim.gpus import GPUS
from qwen_tools.sim.policies import View

NS, NAME = "demo", "qwen-chat"
MODEL = "Qwen/Qwen2.5-7B-Instruct"
TRACE = Path("bench/traces/AzureLLMInferenceTrace_conv.csv")
# The load: the trace's own requests, a third of them kept in the quiet parts, all of them at the peak,
# with a rise and a fall in between (as a day's traffic does, faster): the shares of the run where the
# rise starts, the peak starts, the peak ends and the fall ends.
QUIET = 0.35
RISE, PEAK, PEAK_END, FALL = 0.17, 0.4, 0.65, 0.8
# The operator's settings for the demo: scrape the simulated pods directly, no ports of its own.
OPERATOR_ENV = {
    "QWEN_OPERATOR_METRICS_SOURCE": "pods",
    "QWEN_OPERATOR_POD_METRICS_PORT": "",
    "QWEN_OPERATOR_METRICS_PORT": "0",
    "QWEN_OPERATOR_SCALER_TICK_SECONDS": "0.25",
    "QWEN_OPERATOR_LIVENESS_ENDPOINT": "",
}


LABELS = ["engine", "model_name"]
GAUGES = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)


def _gauges(model: str, running: float, waiting: float, kv: float) -> Iterator[Metric]:
    for (name, help_), value in zip(GAUGES, (running, waiting, kv), strict=True):
        gauge = GaugeMetricFamily(name, help_, labels=LABELS)
        gauge.add_metric(["0", model], float(value))
        yield gauge


def _served(model: str, engine: Engine) -> Iterator[Metric]:
    """The engine's token and request counters and its first-token and queue-time histograms."""
    totals, values = engine.vllm_totals(), ["0", model]
    counters = (
        ("vllm:prompt_tokens", "Number of prefill tokens processed.", totals.prompt_tokens),
        ("vllm:generation_tokens", "Number of generation tokens processed.", totals.generation_tokens),
        ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
         totals.engine.prefix_queries),
        ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
         totals.engine.prefix_hits),
    )  # fmt: skip
    for name, help_, value in counters:
        counter = CounterMetricFamily(name, help_, labels=LABELS)
        counter.add_metric(values, value)
        yield counter
    done = CounterMetricFamily(
        "vllm:request_success",
        "Count of successfully processed requests.",
        labels=[*LABELS, "finished_reason"],
    )
    done.add_metric([*values, "length"], totals.requests)  # the simulator ends requests at their length
    yield done
    # The steps' counts: only the _sum and _count of vLLM's two histograms are read (perf.stepmodel).
    steps = totals.engine
    for name, help_, count, total in (
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
         steps.decode_tokens, steps.decode_seconds),
        ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
         steps.steps, steps.step_tokens),
    ):  # fmt: skip
        family = HistogramMetricFamily(name, help_, labels=LABELS)
        family.add_metric(values, [("+Inf", count)], total)
        yield family
    histograms = (
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
         totals.ttft, engine.ttft_sum),
        ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
         totals.queue_time, engine.queue_sum),
        ("vllm:request_time_per_output_token_seconds",
         "Histogram of time_per_output_token_seconds per request.", totals.tpot, engine.tpot_sum),
    )  # fmt: skip
    for name, help_, hist, total in histograms:
        family = HistogramMetricFamily(name, help_, labels=LABELS)
        family.add_metric(
            values, [("+Inf" if le == math.inf else repr(le), n) for le, n in hist.buckets], total
        )
        yield family


class _Families:
    """A prometheus_client collector of the families ``make()`` gives at each scrape."""

    def __init__(self, make: Callable[[], Iterator[Metric]]) -> None:
        self.make = make

    def collect(self) -> Iterator[Metric]:
        return self.make()


def _exposition(make: Callable[[], Iterator[Metric]]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(make))
    return generate_latest(registry).decode()


def gauges_text(running: float, waiting: float, kv: float, model: str = MODEL) -> str:
    """The three gauges the concurrency target reads, in vLLM 0.32's exposition format and labels."""
    return _exposition(lambda: _gauges(model, running, waiting, kv))


def metrics_text(engine: Engine, model: str = MODEL) -> str:
    """A simulated pod's /metrics in vLLM 0.32's exposition format: the running and waiting requests and
    the KV usage (what the concurrency target reads), the token and request counters and the first-token
    and queue-time histograms (what SLO mode reads)."""

    def families() -> Iterator[Metric]:
        yield from _gauges(model, engine.num_running, engine.num_waiting, engine.kv_usage)
        yield from _served(model, engine)

    return _exposition(families)


def _page(engine: Engine) -> bytes:
    return metrics_text(engine).encode()


class MetricsServer:
    """A /metrics endpoint on ``host:port`` (port 0: any free one) answering ``body()`` on every path."""

    def __init__(self, host: str, port: int, body: Callable[[], bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = body()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a scraper hanging up on a slow answer is its business, not worth a traceback

        self.server = Server((host, port), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OperatorReplicas:
    """The simulated cluster's "policy": whatever the operator wrote into the Deployment."""

    name = "qwen-operator"
    interval = 1.0
    deletion_cost = True  # the operator annotates pod-deletion-cost; the ReplicaSet honours it

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas  # the warm start, until the operator's Deployment says otherwise

    def desired(self, view: View) -> int:
        return self.replicas


MIN_REPLICAS, MAX_REPLICAS = 2, 8
SLO_SECONDS = 2.0  # the demo's SLO: a first token within 2 s for 99% of requests, as the summary scores
# The scaler's reasons, as a person reads them at a glance.
REASONS = {
    "AtTarget": "at target",
    "AboveTarget": "scaling up",
    "ColdStart": "scaled up, pods starting",
    "Panic": "scaling up fast (load far above capacity)",
    "ScaleUpLimited": "scaling up, step limited",
    "BelowTarget": "scaling down",
    "AwaitingFullWindow": "holding: not a full window of data yet",
    "ScaleDownCooldown": "holding: just scaled up",
    "ScaleDownStabilized": "holding: load was higher within the window",
    "ScaleDownLimited": "scaling down, step limited",
    "TooFewReplicas": "at min",
    "MetricsUnavailable": "holding: no metrics",
}


def describe(auto: dict[str, Any], max_replicas: int) -> str:
    """The status's reason in words: ``TooManyReplicas`` reads "at max 5 (load wants 7)"."""
    reason = auto.get("reason")
    if reason == "TooManyReplicas":
        wants = auto.get("recommendation")
        return f"at max {max_replicas}" + (f" (load wants {wants})" if wants is not None else "")
    return REASONS.get(reason or "", reason or "-")


def qwen_service(gpu_product: str) -> dict[str, Any]:
    """The demo's QwenService: the recommended autoscaling (examples/qwen2.5-7b-instruct-slo.yaml: SLO
    mode, a first token within 2 s for 99% of requests) on the simulated GPU, MIN_REPLICAS to
    MAX_REPLICAS, its pods scraped directly. Its windows are as a user writes them: the operator runs on
    simulated time."""
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "model": {"name": MODEL},
            "scheduling": {"nodeSelector": {GPU_PRODUCT_LABEL: gpu_product}},
            "autoscaling": {
                "enabled": True,
                "minReplicas": MIN_REPLICAS,
                "maxReplicas": MAX_REPLICAS,
                "slo": {"timeToFirstTokenSeconds": SLO_SECONDS, "percentile": 99},
                "metrics": {"source": "pods"},
            },
        },
    }


class SimulatedClock:
    """The simulation's time as the operator's scaler reads it: a datetime from ``start`` and a
    monotonic count of seconds, both following ``cluster.second`` (not the wall clock)."""

    def __init__(self, cluster: Cluster, start: datetime.datetime) -> None:
        self.cluster, self.start = cluster, start

    def seconds(self) -> float:
        return float(self.cluster.second)

    def now(self) -> datetime.datetime:
        return self.start + datetime.timedelta(seconds=self.seconds())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Kubelet:
    """Mirrors the simulated pods into the API as Pod objects (IP, readiness) and serves their metrics."""

    def __init__(self, emulator: Any, cluster: Cluster, port: int) -> None:
        self.emulator, self.cluster, self.port = emulator, cluster, port
        self.servers: dict[str, MetricsServer] = {}
        self.ready: dict[str, bool] = {}
        self.created: dict[str, datetime.datetime] = {}  # the API's creationTimestamp
        self.ips: dict[str, str] = {}

    def _ip(self, pod: Pod) -> str:
        if pod.name not in self.ips:
            self.ips[pod.name] = f"127.0.1.{len(self.ips) % 250 + 2}"
        return self.ips[pod.name]

    async def sync(self) -> None:
        from qwen_tools.emulator import DEPLOY, PODS

        now = float(self.cluster.second)
        alive = {f"{NAME}-{p.name}": p for p in self.cluster.live if p.removed is None}
        for name in [n for n in self.ready if n not in alive]:
            await self.emulator.remove(PODS, NS, name)
            del self.ready[name]
            self.created.pop(name, None)
            if name in self.servers:
                self.servers.pop(name).close()
        for name, pod in alive.items():
            ready = pod.ready(now)
            if name not in self.ready:
                meta = {"name": name, "namespace": NS, "labels": labels.common_labels(NAME)}
                status = {"phase": "Pending", "podIP": self._ip(pod)}
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}
                created = await self.emulator.put(PODS, body)
                self.created[name] = parse_time(created["metadata"]["creationTimestamp"]) or clock.utcnow()
                self.ready[name] = False
            if ready and not self.ready[name]:
                self.servers[name] = MetricsServer(self._ip(pod), self.port, partial(_page, pod.engine))
                # Ready after the pod's simulated cold start, as a kubelet would stamp it: the operator
                # measures the service's cold starts from these two times.
                became = self.created[name] + datetime.timedelta(seconds=pod.ready_at - pod.created)
                condition = {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(became)}
                patch = {"status": {"phase": "Running", "conditions": [condition]}}
                await self.emulator.patch(PODS, NS, name, patch, sub="status")
                self.ready[name] = True
        ready_count = sum(self.ready.values())
        dep = self.emulator.get(DEPLOY, NS, NAME)
        if dep is not None and (dep.get("status") or {}).get("readyReplicas") != ready_count:
            counts: dict[str, Any] = {
                "replicas": len(alive),
                "readyReplicas": ready_count,
                "availableReplicas": ready_count,
                "updatedReplicas": len(alive),
                "observedGeneration": dep["metadata"].get("generation", 1),
            }
            await self.emulator.patch(DEPLOY, NS, NAME, {"status": counts}, sub="status")

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


async def run_demo(args: argparse.Namespace) -> int:
    import kmock
    import kopf

    from qwen_operator import handlers
    from qwen_operator.metrics import PodsSource
    from qwen_operator.scaler import Autoscaler
    from qwen_operator.settings import OperatorSettings
    from qwen_tools.emulator import DEPLOY, QSVC, Emulator, install, start_operator

    length: float = args.minutes * 60.0
    rise, peak, peak_end, fall = RISE * length, PEAK * length, PEAK_END * length, FALL * length

    def level(t: float) -> float:
        if t < rise or t >= fall:
            return QUIET
        if t < peak:
            return QUIET + (1 - QUIET) * (t - rise) / (peak - rise)
        if t < peak_end:
            return 1.0
        return 1 - (1 - QUIET) * (t - peak_end) / (fall - peak_end)

    whole = trace.load(args.trace, "conv").window(args.start_minute * 60, length)
    requests = whole.thinned(level, args.seed)
    policy = OperatorReplicas(MIN_REPLICAS)
    # The service has run at its minimum for a while (warm pods, the quiet load they served before t=0).
    settings = Settings(
        GPUS[args.gpu],
        MIN_REPLICAS,
        MAX_REPLICAS,
        MIN_REPLICAS,
        scrape_interval=15,
        seed=args.seed,
        tail=60.0,
    )
    cluster = Cluster(requests, policy, settings)
    port = free_port("127.0.1.2")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("kopf", "aiohttp", "qwen_operator"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(
        f"qwen-operator demo: QwenService {NS}/{NAME} autoscales {MIN_REPLICAS} to {MAX_REPLICAS} replicas "
        f"on a latency SLO (a first token within {SLO_SECONDS:g} s for 99% of requests), on simulated "
        f"{args.gpu.upper()} vLLM pods, {args.speed:g}x faster than real time.\n\n"
        f"The load is {len(requests)} requests of the Azure conversation trace (its minutes "
        f"{args.start_minute}-{args.start_minute + args.minutes}): a third of them until minute "
        f"{rise / 60:.0f}, rising to all of them by minute {peak / 60:.0f}, falling from minute "
        f"{peak_end / 60:.0f} to a third again by minute {fall / 60:.0f}. The service starts "
        f"with {MIN_REPLICAS} warm replicas. Watch 'desired': the scaler adds replicas when the token load "
        f"would push first tokens past {SLO_SECONDS:g} s, and removes them once the load has stayed low "
        f"for its 5-minute window. New replicas take minutes to become ready (the model loads).\n\n"
        f"Columns: simulated time, requests arriving per second, replicas desired and ready, requests "
        f"running and waiting on the pods, their mean KV-cache use, and the scaler's reason.\n"
    )
    # The scaler reads the time from the simulation, not the wall clock: its windows, cooldowns, the
    # traffic between two scrapes and the planner's time constants are the ones a cluster would see,
    # only faster. (The loop and the pods source take their clocks as arguments; the patch reaches the
    # one the handlers start once logged in.)
    sim_clock = SimulatedClock(cluster, clock.utcnow())

    def on_sim_time(cluster_api: Any, config: OperatorSettings, locks: Any, fleet: Any = None) -> Autoscaler:
        # The pods source the scaler builds from its settings, on the simulation's monotonic clock.
        pods = PodsSource(
            config.pod_metrics_port, config.metrics_timeout_seconds, monotonic=sim_clock.seconds
        )
        return Autoscaler(cluster_api, config, locks, clock=sim_clock.now, pods_source=pods, fleet=fleet)

    with (
        tempfile.TemporaryDirectory(prefix="qwen-demo-") as tmp,
        mock.patch.object(handlers, "Autoscaler", on_sim_time),
    ):
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            path = await install(emulator, str(server.url), Path(tmp) / "kubeconfig")
            saved = {k: os.environ.get(k) for k in (*OPERATOR_ENV, "KUBECONFIG")}
            os.environ.update({**OPERATOR_ENV, "QWEN_OPERATOR_POD_METRICS_PORT": str(port)})
            os.environ["KUBECONFIG"] = str(path)
            kopf_settings = kopf.OperatorSettings()
            kopf_settings.posting.enabled = False
            operator, stop = await start_operator(kopf_settings, 30)
            await emulator.put(QSVC, qwen_service(GPUS[args.gpu].product))
            for _ in range(200):  # the simulation starts once the operator has made the Deployment
                if emulator.get(DEPLOY, NS, NAME) is not None:
                    break
                await asyncio.sleep(0.05)
            kubelet = Kubelet(emulator, cluster, port)
            columns = (
                ("sim time", 8),
                ("req/s", 5),
                ("desired", 7),
                ("ready", 5),
                ("running", 7),
                ("waiting", 7),
            )
            header = "  ".join(f"{name:>{width}}" for name, width in columns) + f"  {'KV':>5}  reason"
            print(header)
            print("-" * (len(header) + 20))
            loop = asyncio.get_running_loop()
            started, last_row, arrivals_at_row = loop.time(), -1e9, 0
            try:
                while not cluster.done:
                    dep = emulator.get(DEPLOY, NS, NAME)
                    if dep is not None:
                        policy.replicas = int(dep["spec"].get("replicas", 1))
                    target = (loop.time() - started) * args.speed
                    while cluster.second < target and not cluster.done:
                        cluster.step()
                    await kubelet.sync()
                    if loop.time() - last_row >= args.row_seconds:
                        last_row = loop.time()
                        arrived = cluster.arrived - arrivals_at_row
                        arrivals_at_row = cluster.arrived
                        span = args.row_seconds * args.speed
                        svc = emulator.get(QSVC, NS, NAME) or {}
                        auto = (svc.get("status") or {}).get("autoscaling") or {}
                        live = [p for p in cluster.live if p.ready(cluster.second)]
                        kv = sum(p.engine.kv_usage for p in live) / len(live) if live else 0.0
                        minutes, seconds = divmod(cluster.second, 60)
                        print(
                            f"{minutes:5d}:{seconds:02d}  {arrived / span:5.1f}  {policy.replicas:7d}  "
                            f"{len(live):5d}  {sum(p.engine.num_running for p in live):7d}  "
                            f"{sum(p.engine.num_waiting for p in live):7d}  {kv:5.2f}  "
                            f"{describe(auto, MAX_REPLICAS)}",
                            flush=True,
                        )
                    await asyncio.sleep(0.05)
            finally:
                kubelet.close()
                stop.set()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(operator, 15)
                for key, value in saved.items():  # leave the environment as it was
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            events = [
                e for e in emulator.items("v1/events", NS) if e.get("reason") in ("ScaledUp", "ScaledDown")
            ]
            status = (emulator.get(QSVC, NS, NAME) or {}).get("status") or {}
            last_word = (status.get("autoscaling") or {}).get("message", "-")
    result = cluster.result()
    summary = score.summarize(result)
    busy = dataclasses.replace(result, requests=[r for r in result.requests if rise <= r.arrival < fall])
    busy_part = dataclasses.replace(score.summarize(busy), policy=f"minutes {rise / 60:.0f}-{fall / 60:.0f}")
    print(
        f"\nSummary, in simulated time: the share of requests whose first token came within "
        f"{SLO_SECONDS:g} s (none timed out or killed), and the GPU-hours the replicas cost."
    )
    print(report.table([summary, busy_part]))
    print(f"\nScaling events the operator posted ({len(events)}):")
    for e in events:
        print(f"  {e.get('reason')}: {e.get('message')}")
    print(f"\nThe scaler's last word (status.autoscaling.message):\n  {last_word}")
    if args.png:
        path = report.timeline_png(
            [result],
            args.png,
            f"make demo: the operator on simulated {args.gpu.upper()} pods ({args.speed:g}x)",
            max_replicas=MAX_REPLICAS,
        )
        print(f"\ntimeline: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_tools.demo", description=__doc__)
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--gpu", default="a10g", choices=sorted(GPUS))
    parser.add_argument("--speed", type=float, default=15.0, help="simulated seconds per real second")
    parser.add_argument("--start-minute", type=int, default=10, help="where the slice starts in the trace")
    parser.add_argument("--minutes", type=int, default=30, help="how much of the trace to replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--row-seconds", type=float, default=3.0, help="real seconds between table rows")
    parser.add_argument("--png", default="demo-timeline.png", help="timeline plot ('' for none)")
    args = parser.parse_args(argv)
    if not args.trace.exists():
        print(f"demo: {args.trace} not found (run from the repository root)", file=sys.stderr)
        return 2
    started = time.monotonic()
    code = asyncio.run(run_demo(args))
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
