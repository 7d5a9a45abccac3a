"""The operator itself at scale: N QwenServices on the kmock emulator, metrics through a real Prometheus.

The real operator runs as its own process (``qwen-operator run``, the image's command) against the
emulator. Every QwenService has one ready pod whose vLLM ``/metrics`` is served over HTTP and scraped
by a real Prometheus (the Debian package), exactly as the scaler's queries expect. Load is constant
and at target, so once everything is created the system is idle: nothing should be written.

Measured per N: time until every Deployment exists, evaluation-cycle time (the operator's own
histogram), Prometheus queries per cycle (Prometheus' own request counter), the operator's peak RSS,
and API writes per idle cycle. Run from the repository root: ``make bench-operator``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import kmock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.prom import Prometheus  # noqa: E402

from qwen_operator import labels  # noqa: E402
from qwen_tools.demo import MetricsServer, free_port, gauges_text  # noqa: E402
from qwen_tools.emulator import DEPLOY, PODS, QSVC, Emulator, install  # noqa: E402

NS = "scale"
INTERVAL = 15  # evaluationIntervalSeconds of every service (the default; --interval), and the scrape interval
# The benchmark reads the operator's own /metrics (1,000 services' gauges are a large page) sparingly,
# about as often as a Prometheus scraping it would, so that serving it does not count as the operator's
# work per cycle.
POLL = 5.0
SCRAPE_INTERVAL = 15


def service(i: int, interval: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "metadata": {"name": f"svc-{i:04d}", "namespace": NS},
        "spec": {
            "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
            "autoscaling": {
                "enabled": True,
                "minReplicas": 1,
                "maxReplicas": 3,
                "evaluationIntervalSeconds": interval,
            },
        },
    }


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


async def api_latency_ms(url: str, n: int) -> float:
    """Mean time of a GET of one QwenService from the emulator while the operator runs (its floor)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for i in range(20):
            base = f"{url.rstrip('/')}/apis/serving.qwenops.io/v1alpha1/namespaces/{NS}/qwenservices"
            path = f"{base}/svc-{i % n:04d}"
            async with session.get(path) as r:
                await r.read()
        return round((time.perf_counter() - started) / 20 * 1000, 1)


def decisions(text: str) -> float:
    """Scaling decisions so far, over every service, direction and reason."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("qwen_operator_scaling_decisions_total{")
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match[1]) / 1024 if match else float("nan")


def reads(emulator: Emulator) -> dict[str, int]:
    """Calls that read, by verb (a watch is one long request: not counted)."""
    out = {"list": 0, "get": 0}
    for (_, _, verb), count in emulator.calls.items():
        if verb in out:
            out[verb] += count
    return out


async def measure(
    n: int,
    idle_cycles: int,
    workdir: Path,
    interval: int = INTERVAL,
    relist_seconds: float | None = None,
    varying: bool = False,
) -> dict[str, Any]:
    # At target, so nothing should change: only the three gauges the scaler reads (the full 55 KB page
    # x 1,000 pods would measure this one server, not the operator); Prometheus sets the path per pod.
    at_target = gauges_text(running=20, waiting=0, kv=0.3, model="Qwen/Qwen2.5-0.5B-Instruct").encode()
    rng = random.Random(n)

    def wandering() -> bytes:
        """Real load moves between scrapes (17-23 requests): the figures change, the decision holds."""
        running = 20 + rng.randint(-3, 3)
        return gauges_text(running=running, waiting=0, kv=0.3, model="Qwen/Qwen2.5-0.5B-Instruct").encode()

    metrics = MetricsServer("127.0.0.1", 0, wandering if varying else lambda: at_target)
    (workdir / f"prom-{n}").mkdir(parents=True, exist_ok=True)
    prom = Prometheus(workdir / f"prom-{n}", scrape_interval=f"{SCRAPE_INTERVAL}s")
    groups = [
        {
            "targets": [metrics.address],
            "labels": {
                "__metrics_path__": f"/metrics/svc-{i:04d}-0",
                "__meta_kubernetes_namespace": NS,
                "__meta_kubernetes_pod_name": f"svc-{i:04d}-0",
                "__meta_kubernetes_pod_label_serving_qwenops_io_service": f"svc-{i:04d}",
                "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by": "qwen-operator",
                "__meta_kubernetes_pod_container_port_name": "http",
            },
        }
        for i in range(n)
    ]
    prom.targets.write_text(json.dumps(groups))
    prom.start()
    op_metrics = free_port()
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        config = await install(emulator, str(server.url), workdir / f"kubeconfig-{n}")
        for i in range(n):
            await emulator.put(QSVC, service(i, interval))
            pod = f"svc-{i:04d}-0"
            await emulator.put(
                PODS,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod,
                        "namespace": NS,
                        "labels": labels.common_labels(f"svc-{i:04d}"),
                    },
                    "status": {
                        "phase": "Running",
                        "podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                },
            )
        env = {
            **os.environ,
            "KUBECONFIG": str(config),
            "QWEN_OPERATOR_PROMETHEUS_URL": prom.url,
            "QWEN_OPERATOR_METRICS_PORT": str(op_metrics),
            "QWEN_OPERATOR_LIVENESS_ENDPOINT": "",
            # A tick per evaluation interval: every tick evaluates every service (one batched cycle).
            "QWEN_OPERATOR_SCALER_TICK_SECONDS": str(interval),
            "QWEN_OPERATOR_METRICS_TIMEOUT_SECONDS": "30",
        }
        if relist_seconds is not None:
            env["QWEN_OPERATOR_CACHE_RELIST_SECONDS"] = str(relist_seconds)
        binary = Path(sys.executable).parent / "qwen-operator"
        log = (workdir / f"operator-{n}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(str(binary), "run", env=env, stdout=log, stderr=log)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while len(emulator.items(DEPLOY, NS)) < n:
                await asyncio.sleep(0.5)
                if proc.returncode is not None or loop.time() - started > 900:
                    raise RuntimeError(f"only {len(emulator.items(DEPLOY, NS))}/{n} Deployments")
            created_s = loop.time() - started
            url = f"http://127.0.0.1:{op_metrics}/metrics"

            async def text() -> str:
                return await loop.run_in_executor(None, scrape, url)

            # Settle: every service evaluated at least twice (status written once, then nothing changes).
            while decisions(await text()) < 2 * n:
                await asyncio.sleep(POLL)
                if loop.time() - started > 900:
                    raise RuntimeError(f"the scaler did not evaluate all {n} services twice in 15 minutes")
            # ...and every pod scraped at least twice (a first sample is a change: metrics now available).
            await asyncio.sleep(max(interval, 2 * SCRAPE_INTERVAL))
            count = "qwen_operator_evaluation_seconds_count"

            async def just_after(cycles: float) -> str:
                """The operator's metrics as soon as its cycle count passes ``cycles`` (the next cycle's
                queries have not started yet, so Prometheus' counter and the cycle count agree)."""
                while sample(page := await text(), count) <= cycles:  # noqa: ASYNC110  (another process)
                    await asyncio.sleep(0.5)
                return page

            first = await just_after(sample(await text(), count))
            queries_before = await loop.run_in_executor(None, prom.query_requests)
            writes_before = sum(emulator.writes.values())
            reads_before = reads(emulator)
            cpu_before = cpu_seconds(proc.pid)
            cycles_before = sample(first, count)
            decisions_before = decisions(first)
            seconds_before = sample(first, "qwen_operator_evaluation_seconds_sum")
            await asyncio.sleep(idle_cycles * interval - 2)
            last = await just_after(cycles_before + idle_cycles - 1)
            queries = await loop.run_in_executor(None, prom.query_requests) - queries_before
            cpu_after = cpu_seconds(proc.pid)
            read = {verb: count - reads_before[verb] for verb, count in reads(emulator).items()}
            get_ms = await api_latency_ms(str(server.url), n)  # its own GETs: after the count
            cycles = sample(last, count) - cycles_before
            query_s = sample(last, 'qwen_operator_metric_query_seconds_sum{source="prometheus"}') - sample(
                first, 'qwen_operator_metric_query_seconds_sum{source="prometheus"}'
            )
            writes = sum(emulator.writes.values()) - writes_before
            per_cycle = (decisions(last) - decisions_before) / cycles
            evaluated = sum(1 for s in emulator.items(QSVC, NS) if (s.get("status") or {}).get("autoscaling"))
            return {
                "services": n,
                "interval_s": interval,
                "deployments_created_s": round(created_s, 1),
                "services_with_scaler_status": evaluated,
                "cycles_measured": int(cycles),
                "services_per_cycle": round(per_cycle, 1),
                "operator_cpu_s_per_cycle": round((cpu_after - cpu_before) / cycles, 3),
                "evaluation_cycle_s": round(
                    (sample(last, "qwen_operator_evaluation_seconds_sum") - seconds_before) / cycles, 3
                ),
                "prometheus_queries_per_cycle": round(queries / cycles, 2),
                "metric_query_s_per_cycle": round(query_s / cycles, 3),
                "emulator_get_ms": get_ms,
                "api_writes_per_idle_cycle": round(writes / cycles, 2),
                "api_lists_per_idle_cycle": round(read["list"] / cycles, 2),
                "api_gets_per_idle_cycle": round(read["get"] / cycles, 2),
                "operator_peak_rss_mib": round(peak_rss_mib(proc.pid), 1),
            }
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 30)
                if proc.returncode is None:
                    proc.kill()
            log.close()
            prom.stop()
            metrics.close()


HEADER = """# The operator at scale

Written by `bench/operator_scale.py` (`make bench`, second part; `make bench-operator`). The real
operator process (`qwen-operator run`) runs against the kmock emulator with N QwenServices; each has
one ready pod whose vLLM `/metrics` a real Prometheus scrapes every 15 s, at constant load at target,
so after start-up nothing should change. Every service is evaluated every `interval_s` (one batched
cycle; `make bench` uses 5 s to fit its time budget, `make bench-operator` the default 15 s).
Per cycle: the operator's CPU seconds, its evaluation time (its own histogram), the Prometheus queries
it made (Prometheus' own counter), its API writes, and its list and get calls (the emulator's own
counters; the watches that feed the scaler's caches are long-running requests, not counted).
`deployments_created_s` is the time from the operator's start until every Deployment exists. Method
and discussion: `docs/benchmark.md`.

"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", default="10,100,1000", help="comma-separated N values")
    parser.add_argument("--idle-cycles", type=int, default=4)
    parser.add_argument("--interval", type=int, default=INTERVAL, help="evaluation interval (s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--relist-seconds",
        type=float,
        default=None,
        help="the scaler's relist period (QWEN_OPERATOR_CACHE_RELIST_SECONDS); 0.001 lists every tick, "
        "as the scaler did before its watch caches",
    )
    parser.add_argument("--name", default="operator", help="output file stem in --out")
    parser.add_argument(
        "--varying",
        action="store_true",
        help="each scrape reports another load (17-23 in flight; the decision holds), not a constant",
    )
    args = parser.parse_args()
    if not shutil.which("prometheus"):
        print("bench-operator needs the prometheus binary (apt-get install prometheus)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="qwen-bench-operator-") as tmp:
        for n in (int(x) for x in args.services.split(",")):
            started = time.monotonic()
            try:
                row = asyncio.run(
                    measure(n, args.idle_cycles, Path(tmp), args.interval, args.relist_seconds, args.varying)
                )
            except RuntimeError as exc:  # report it, and go on with the next N
                row = {"services": n, "error": str(exc)}
            row["wall_s"] = round(time.monotonic() - started, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    (args.out / f"{args.name}.md").write_text(HEADER + "\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
