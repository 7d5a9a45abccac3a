"""Where the scaler's observations come from: Prometheus (batched queries) or the pods' own /metrics.

A :class:`MetricsSource` turns the scaler's targets (each QwenService's ready pods) into one
:class:`~qwen_operator.scaling.Observation` per service. Sources never raise for a bad answer: a
failure becomes ``Observation.error`` and the decision holds the replicas.

vLLM's metric names: ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and the KV-cache
usage ``vllm:kv_cache_usage_perc`` (0-1), or ``vllm:gpu_cache_usage_perc`` on vLLM older than 0.12.
Every series carries ``model_name`` and ``engine``; a pod's figures are summed over its engines
(KV usage: their mean).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from qwen_operator import telemetry
from qwen_operator.idle import RouterSample
from qwen_operator.scaling import Observation, PodSample
from qwen_operator.traffic import (
    TRAFFIC_WINDOW,
    TRAFFIC_WINDOW_SECONDS,
    EngineTotals,
    Histogram,
    Totals,
    Traffic,
)
from qwen_operator.urls import Endpoint

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.12
# Counters and histograms: what was served, and how fast (summed over engines).
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUESTS = "vllm:request_success_total"  # one series per finished_reason
TTFT = "vllm:time_to_first_token_seconds"
QUEUE_TIME = "vllm:request_queue_time_seconds"
TPOT = "vllm:request_time_per_output_token_seconds"  # per request (not the per-token inter-token one)
# The engine's steps (perf.stepmodel): each decode token's step time, and the tokens per step; and
# its prefix cache: prompt tokens looked up, and those it held (not computed again).
ITL = "vllm:inter_token_latency_seconds"
ITERATION = "vllm:iteration_tokens_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
ENGINE_COUNTERS = (
    f"{ITL}_sum", f"{ITL}_count", f"{ITERATION}_count", f"{ITERATION}_sum", PREFIX_QUERIES, PREFIX_HITS,
)  # fmt: skip

# What a source reads and parses is bounded: a pod or a Prometheus answers with what it likes (a tenant
# runs both), and the operator must neither run out of memory nor stall its event loop (where the
# Lease is renewed) on it. vLLM's /metrics is ~100 KB; a Prometheus answer for 1,000 services a few MB.
POD_METRICS_MAX_BYTES = 4 * 1024 * 1024
PROMETHEUS_MAX_BYTES = 32 * 1024 * 1024
# Parsing runs off the event loop, in these threads (shared by every source), within the deadline.
PARSERS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="qwen-metrics-parse")

log = logging.getLogger(__name__)


class Refused(Exception):
    """An answer the operator will not read; the message says what went wrong in words that are safe
    to show (never the answer's content)."""


async def read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body, or Refused when it is (announced or found to be) larger than ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise Refused(f"{what} larger than {limit // 1024 // 1024} MiB")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise Refused(f"{what} larger than {limit // 1024 // 1024} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def http_failure(status: int) -> str:
    return f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")


def client_failure(exc: BaseException, timeout: float) -> str:
    """What a failed request says to the user: the kind of failure, never what the server sent."""
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else "unreachable"
        return f"cannot connect ({reason})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return http_failure(exc.status)
    if isinstance(exc, aiohttp.ClientError):
        return f"the connection failed ({type(exc).__name__})"
    return f"failed ({type(exc).__name__})"


@dataclass(frozen=True)
class PodRef:
    name: str
    ip: str | None = None


@dataclass(frozen=True)
class Target:
    """One QwenService to observe: its Deployment's replicas and its ready pods."""

    namespace: str
    name: str
    replicas: int
    pods: tuple[PodRef, ...]
    cold_starts: tuple[float, ...] = ()  # seconds from creation to Ready of its ready pods
    routers: tuple[PodRef, ...] | None = None  # its router's ready pods (None: no router in front)
    node_waits: tuple[float, ...] = ()  # of its ready pods, seconds from creation to scheduled
    waiting_for_node: int = 0  # its pods unschedulable now

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def observation(self, samples: Mapping[str, PodSample], error: str | None = None) -> Observation:
        names = tuple(p.name for p in self.pods)
        kept = {pod: s for pod, s in samples.items() if pod in names}
        router = None if self.routers is None else RouterSample(error="not read")
        return Observation(
            replicas=self.replicas,
            ready_pods=names,
            samples=kept,
            error=error,
            cold_starts=self.cold_starts,
            router=router,
            node_waits=self.node_waits,
            waiting_for_node=self.waiting_for_node,
        )


class MetricsSource(Protocol):
    name: str

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        """One observation per target; never raises for a failed or malformed answer."""
        ...


# ------------------------------------------------------------------------------------ aggregation


@dataclass
class _PodTotals:
    """One pod's vLLM gauges, summed over its series (one per engine); both KV-cache names kept; and
    its counters and histogram buckets, summed over engines (and finish reasons)."""

    running: float = 0.0
    waiting: float = 0.0
    kv: list[float] = field(default_factory=list)
    kv_old: list[float] = field(default_factory=list)
    seen: bool = False
    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    def sample(self, age: float, window: float | None = None) -> PodSample | None:
        """The pod's sample; with ``window``, its counters are increases over that many seconds."""
        if not self.seen:
            return None
        kv = self.kv or self.kv_old
        traffic = None
        if window is not None and self.counters:
            traffic = Traffic(window, *self._counts(), *self._histograms(), engine=self._engine())
        return PodSample(self.running, self.waiting, sum(kv) / len(kv) if kv else None, age, traffic)

    def totals(self) -> Totals | None:
        return Totals(*self._counts(), *self._histograms(), engine=self._engine()) if self.counters else None

    def _engine(self) -> EngineTotals:
        return EngineTotals(*(self.counters.get(name, 0.0) for name in ENGINE_COUNTERS))

    def _counts(self) -> tuple[float, float, float]:
        """Prompt tokens, generated tokens, finished requests."""
        get = self.counters.get
        return get(PROMPT_TOKENS, 0.0), get(GENERATION_TOKENS, 0.0), get(REQUESTS, 0.0)

    def _histograms(self) -> tuple[Histogram, Histogram, Histogram]:
        """Time to first token, queue time, time per output token."""
        get = self.buckets.get
        return Histogram.of(get(TTFT, {})), Histogram.of(get(QUEUE_TIME, {})), Histogram.of(get(TPOT, {}))


def _accumulate(acc: _PodTotals, name: str, value: float, le: str | None = None) -> None:
    if name == RUNNING:
        acc.running += value
        acc.seen = True
    elif name == WAITING:
        acc.waiting += value
        acc.seen = True
    elif name == KV_USAGE:
        acc.kv.append(value)
    elif name == KV_USAGE_OLD:
        acc.kv_old.append(value)
    elif name in (PROMPT_TOKENS, GENERATION_TOKENS, REQUESTS) or name in ENGINE_COUNTERS:
        acc.counters[name] = acc.counters.get(name, 0.0) + value
    elif le is not None and name in (f"{TTFT}_bucket", f"{QUEUE_TIME}_bucket", f"{TPOT}_bucket"):
        bounds = acc.buckets.setdefault(name.removesuffix("_bucket"), {})
        bound = _number(le)
        if not math.isnan(bound):
            bounds[bound] = bounds.get(bound, 0.0) + value


def parse_vllm_metrics(text: str, model_name: str | None = None) -> PodSample | None:
    """A pod's sample from its /metrics text (None when it exports no vLLM request gauges); its
    cumulative counters come with :func:`parse_vllm_totals`.

    Raises ValueError on text that is not the Prometheus exposition format.
    """
    return _parse(text, model_name).sample(0.0)


def parse_vllm_totals(text: str, model_name: str | None = None) -> tuple[PodSample | None, Totals | None]:
    """A pod's sample and its cumulative counters and histograms, from one /metrics text."""
    acc = _parse(text, model_name)
    return acc.sample(0.0), acc.totals()


VLLM_PREFIXES = ("vllm:", "# HELP vllm:", "# TYPE vllm:")


def vllm_lines(text: str) -> str:
    """Only vLLM's families (the page's other families, and anything that is not a metric, are not
    parsed at all)."""
    return "\n".join(line for line in text.splitlines() if line.startswith(VLLM_PREFIXES)) + "\n"


def _parse(text: str, model_name: str | None) -> _PodTotals:
    acc = _PodTotals()
    for family in text_string_to_metric_families(vllm_lines(text)):
        for sample in family.samples:
            if model_name is not None and sample.labels.get("model_name", model_name) != model_name:
                continue
            _accumulate(acc, sample.name, float(sample.value), sample.labels.get("le"))
    return acc


def _parse_page(body: bytes) -> tuple[PodSample | None, Totals | None]:
    return parse_vllm_totals(body.decode("utf-8"))


# --------------------------------------------------------------------------------------- pods


PREVIOUS_SCRAPE_TTL = 600.0  # seconds a pod's last counters are kept for the next scrape's increase


class PodsSource:
    """Scrape each ready pod's /metrics directly: no Prometheus, seconds of lag, not a scrape interval."""

    name = "pods"

    def __init__(
        self,
        port: int = 8000,
        timeout: float = 2.0,
        concurrency: int = 32,
        monotonic: Callable[[], float] = time.monotonic,
        max_bytes: int = POD_METRICS_MAX_BYTES,
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.limit = asyncio.Semaphore(concurrency)
        self.monotonic = monotonic
        self.max_bytes = max_bytes
        # Each pod's last counters (by name and IP: a new pod of the same name starts afresh), and when
        # they were read: the next scrape's increase over them is its traffic.
        self.previous: dict[tuple[str, str], tuple[float, Totals]] = {}

    async def _scrape(self, session: aiohttp.ClientSession, pod: PodRef) -> PodSample | str:
        if not pod.ip:
            return "no pod IP"
        url = f"http://{pod.ip}:{self.port}/metrics"
        try:
            async with self.limit, session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    return http_failure(response.status)
                body = await read_capped(response, self.max_bytes, "/metrics")
            loop = asyncio.get_running_loop()
            sample, totals = await loop.run_in_executor(PARSERS, _parse_page, body)
        except (ValueError, UnicodeDecodeError) as exc:
            log.debug("pod %s: malformed /metrics: %.200s", pod.name, exc)
            return "malformed /metrics"
        except (aiohttp.ClientError, TimeoutError, Refused) as exc:
            return client_failure(exc, self.timeout)
        if sample is None:
            return "no vLLM metrics"
        return self._with_traffic(pod, sample, totals)

    def _with_traffic(self, pod: PodRef, sample: PodSample, totals: Totals | None) -> PodSample:
        """The sample with what the pod served since its previous scrape (none on the first, or after
        its counters reset)."""
        key, now = (pod.name, pod.ip or ""), self.monotonic()
        before = self.previous.get(key)
        if totals is None:
            self.previous.pop(key, None)
            return sample
        self.previous[key] = (now, totals)
        if before is None:
            return sample
        traffic = totals.since(before[1], now - before[0])
        return replace(sample, traffic=traffic) if traffic is not None else sample

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        """Every ready pod's /metrics, within one deadline (``timeout``) for the whole evaluation: pods
        still unanswered then count as silent, however many wait for a connection slot."""
        pods = [(t, p) for t in targets for p in t.pods]
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.ensure_future(self._scrape(session, p)) for _, p in pods]
            done, pending = await asyncio.wait(tasks, timeout=self.timeout) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            silent = f"no answer within {self.timeout:g} s"
            results = [task.result() if task in done else silent for task in tasks]
        telemetry.QUERY_SECONDS.labels(self.name).observe(time.monotonic() - started)
        samples: dict[tuple[str, str], dict[str, PodSample]] = defaultdict(dict)
        errors: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (target, pod), result in zip(pods, results, strict=True):
            if isinstance(result, PodSample):
                samples[target.key][pod.name] = result
            else:
                errors[target.key].append(f"{pod.name}: {result}")
                telemetry.QUERY_ERRORS.labels(self.name).inc()
        # Forget pods not scraped for a while (deleted, or no longer ready). Not "not asked this time":
        # each evaluation asks only for the services that are due, not for every pod there is.
        horizon = self.monotonic() - PREVIOUS_SCRAPE_TTL
        for gone in [k for k, (at, _) in self.previous.items() if at < horizon]:
            del self.previous[gone]
        out = {}
        for t in targets:
            got = samples.get(t.key, {})
            error = (
                None if got or not errors.get(t.key) else "scraping pods failed: " + "; ".join(errors[t.key])
            )
            out[t.key] = t.observation(got, error)
        return out


# ---------------------------------------------------------------------------------- prometheus


@dataclass(frozen=True)
class PrometheusConfig:
    """How to reach one Prometheus. Services that share a config share its queries."""

    endpoint: Endpoint
    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # a PEM bundle's path (the operator-wide setting)
    ca_data: str | None = None  # or the PEM bundle itself (a service's caSecretRef)
    insecure_skip_verify: bool = False

    @property
    def url(self) -> str:
        return str(self.endpoint)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What aiohttp verifies the server with (False: nothing; True: the system's CAs)."""
        if self.endpoint.scheme != "https":
            return True
        if self.insecure_skip_verify:
            return False
        if self.ca_file is None and self.ca_data is None:
            return True
        return ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)


def queries(service_label: str, window: str = TRAFFIC_WINDOW, match: str = "") -> dict[str, str]:
    """One PromQL query per signal, for every QwenService at once, grouped by namespace/pod/service
    (``match``: more label matchers, e.g. one service's for ``qwen-operator tune``; ``window``: of the
    counters' increase).

    Each engine's series is taken once (``max by`` its identity) before the engines are summed: the
    same pod scraped by two jobs (the documented one and a cluster's common ``kubernetes-pods`` job,
    which the pods' ``prometheus.io/scrape`` annotation invites) gives two series that differ only in
    ``job`` and ``instance``, and must not count twice."""
    by = f"namespace, pod, {service_label}"
    engine = f"{by}, engine, model_name"
    sel = f'{{{service_label}!=""{"," + match if match else ""}}}'

    def once(metric: str) -> str:
        return f"max by ({engine}) ({metric}{sel})"

    def increase(metric: str, *labels: str) -> str:
        keep = ", ".join((engine, *labels))
        summed = ", ".join((by, *labels)) if labels[-1:] == ("le",) else by
        return f"sum by ({summed}) (max by ({keep}) (increase({metric}{sel}[{window}])))"

    return {
        "running": f"sum by ({by}) ({once(RUNNING)})",
        "waiting": f"sum by ({by}) ({once(WAITING)})",
        "kv": f"avg by ({by}) ({once(KV_USAGE)} or {once(KV_USAGE_OLD)})",
        "timestamp": f"max by ({by}) (timestamp({RUNNING}{sel}))",
        "prompt_tokens": increase(PROMPT_TOKENS),
        "generation_tokens": increase(GENERATION_TOKENS),
        "requests": increase(REQUESTS, "finished_reason"),
        "ttft": increase(f"{TTFT}_bucket", "le"),
        "queue_time": increase(f"{QUEUE_TIME}_bucket", "le"),
        "tpot": increase(f"{TPOT}_bucket", "le"),
        **{name: increase(name) for name in ENGINE_COUNTERS},
    }


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# Prometheus' own error types (web/api/v1/api.go): a fixed vocabulary, safe to repeat in a status.
PROMETHEUS_ERROR_TYPES = {
    "timeout", "canceled", "execution", "bad_data", "internal", "unavailable", "not_found",
}  # fmt: skip


def decode_vector(body: bytes) -> list[dict[str, Any]]:
    """The result of an instant query's JSON answer; Refused for anything else."""
    try:
        answer = json.loads(body)
    except ValueError:
        raise Refused("a malformed answer (not JSON)") from None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or answer.get("status") != "success":
        error_type = answer.get("errorType") if isinstance(answer, dict) else None
        said = f" ({error_type})" if error_type in PROMETHEUS_ERROR_TYPES else ""
        raise Refused(f"an error{said} instead of a query result")
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        raise Refused("a malformed answer (not an instant vector)")
    return result


class PrometheusSource:
    """Batched PromQL: the number of queries per evaluation does not grow with the number of services.

    Asynchronous (aiohttp, like the rest of the operator): the evaluation's deadline cancels every
    request still open, however slowly a server trickles its answer, so a slow Prometheus costs its own
    services an evaluation and nobody else anything. Redirects are not followed (the credentials stay
    with the URL they were given for), answers are capped and parsed off the event loop, and what goes
    into a status says what failed, never what the server answered."""

    name = "prometheus"

    def __init__(
        self,
        config: PrometheusConfig,
        service_label: str = "serving_qwenops_io_service",
        timeout: float = 5.0,
        *,
        who: str = "Prometheus",
        concurrency: int = 4,
        max_bytes: int = PROMETHEUS_MAX_BYTES,
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        self.config = config
        self.service_label = service_label
        self.timeout = timeout
        self.who = who  # how messages name it: "the operator's Prometheus", "this service's Prometheus (URL)"
        self.concurrency = concurrency
        self.max_bytes = max_bytes
        self.queries = queries(service_label)
        self.ssl = config.ssl_context()  # built once: reading a CA bundle is not free
        self.connector = connector or (lambda: aiohttp.TCPConnector(limit=self.concurrency, ssl=self.ssl))
        self.busy = False  # an evaluation is running (the next one is skipped, never stacked)

    def _session(self) -> aiohttp.ClientSession:
        cfg = self.config
        headers = {}
        if cfg.bearer_token:
            headers["Authorization"] = f"Bearer {cfg.bearer_token}"
        elif cfg.username:
            headers["Authorization"] = aiohttp.encode_basic_auth(cfg.username, cfg.password or "")
        return aiohttp.ClientSession(
            connector=self.connector(),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers=headers,
            trust_env=False,  # no proxy from the environment: the credentials go to this URL only
        )

    async def _query(self, session: aiohttp.ClientSession, promql: str) -> bytes:
        params = {"query": promql, "timeout": f"{max(1, int(self.timeout * 1000))}ms"}
        url = self.config.endpoint.url("/api/v1/query").with_query(params)
        async with session.get(url, allow_redirects=False, ssl=self.ssl) as response:
            if response.status != 200:
                detail = await response.content.read(300)
                log.debug("%s answered HTTP %s: %r", self.who, response.status, detail[:200])
                raise Refused(http_failure(response.status))
            return await read_capped(response, self.max_bytes, "an answer")

    async def _all(self) -> dict[tuple[str, str], dict[str, PodSample]]:
        names = list(self.queries)
        async with self._session() as session:
            tasks = [asyncio.ensure_future(self._query(session, self.queries[n])) for n in names]
            try:
                bodies = await asyncio.gather(*tasks)
            finally:  # the first failure (or the deadline) ends the others: none outlives the session
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(PARSERS, self._parse, dict(zip(names, bodies, strict=True)))

    def _parse(self, bodies: Mapping[str, bytes]) -> dict[tuple[str, str], dict[str, PodSample]]:
        return self._split({name: decode_vector(body) for name, body in bodies.items()})

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        if self.busy:  # the scaler never asks twice at once; a caller that does is told so, not queued
            skipped = f"{self.who} skipped: its previous evaluation still runs"
            return {t.key: t.observation({}, skipped) for t in targets}
        started = time.monotonic()
        telemetry.QUERIES.labels(self.name).inc(len(self.queries))
        self.busy = True
        try:
            by_pod = await asyncio.wait_for(self._all(), self.timeout)
        except Exception as exc:  # any failure of the source holds replicas; it never stops the scaler
            telemetry.QUERY_ERRORS.labels(self.name).inc()
            reason = client_failure(exc, self.timeout)
            log.debug("%s failed: %s: %.200s", self.who, reason, exc)
            return {t.key: t.observation({}, f"{self.who} failed: {reason}") for t in targets}
        finally:
            self.busy = False
            telemetry.QUERY_SECONDS.labels(self.name).observe(time.monotonic() - started)
        return {t.key: t.observation(by_pod.get(t.key, {})) for t in targets}

    def _split(
        self, answers: Mapping[str, Iterable[Mapping[str, Any]]]
    ) -> dict[tuple[str, str], dict[str, PodSample]]:
        """Per (namespace, service), per pod: the figures, with the sample age Prometheus reports."""
        accs: dict[tuple[str, str, str], _PodTotals] = defaultdict(_PodTotals)
        ages: dict[tuple[str, str, str], float] = {}
        names = {
            "running": RUNNING,
            "waiting": WAITING,
            "kv": KV_USAGE,
            "prompt_tokens": PROMPT_TOKENS,
            "generation_tokens": GENERATION_TOKENS,
            "requests": REQUESTS,
            "ttft": f"{TTFT}_bucket",
            "queue_time": f"{QUEUE_TIME}_bucket",
            "tpot": f"{TPOT}_bucket",
            **{name: name for name in ENGINE_COUNTERS},
        }
        for signal, series in answers.items():
            for item in series:
                labels = item.get("metric", {})
                key = (labels.get("namespace", ""), labels.get(self.service_label, ""), labels.get("pod", ""))
                if not all(key):
                    continue
                at, value = item.get("value", (math.nan, "NaN"))
                number = _number(value)
                if signal == "timestamp":
                    ages[key] = max(0.0, _number(at) - number)
                else:
                    _accumulate(accs[key], names[signal], number, labels.get("le"))
        out: dict[tuple[str, str], dict[str, PodSample]] = defaultdict(dict)
        for (namespace, service, pod), acc in accs.items():
            sample = acc.sample(ages.get((namespace, service, pod), math.inf), TRAFFIC_WINDOW_SECONDS)
            if sample is not None:
                out[namespace, service][pod] = sample
        return out


# ------------------------------------------------------------------------------------ the router

ROUTER_WAITING = "qwen_router_waiting"
ROUTER_IN_FLIGHT = "qwen_router_in_flight"
ROUTER_ARRIVALS = "qwen_router_arrivals_total"
ROUTER_METRICS_MAX_BYTES = 1024 * 1024


def parse_router_metrics(text: str) -> tuple[float, float, float]:
    """(held, in flight, arrivals) from one router pod's /metrics; ValueError without the router's."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (ROUTER_WAITING, ROUTER_IN_FLIGHT, ROUTER_ARRIVALS):
                value = float(sample.value)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{sample.name} is {value}")
                found[sample.name] = found.get(sample.name, 0.0) + value
    if ROUTER_WAITING not in found or ROUTER_ARRIVALS not in found:
        raise ValueError("no router metrics")
    return found[ROUTER_WAITING], found.get(ROUTER_IN_FLIGHT, 0.0), found[ROUTER_ARRIVALS]


class RouterReader:
    """Reads the routers' own /metrics directly, whatever the service's metrics source: what is held
    at the router now matters within seconds (a request waiting at zero replicas), not a scrape
    interval later."""

    def __init__(
        self, port: int = 8000, timeout: float = 2.0, max_bytes: int = ROUTER_METRICS_MAX_BYTES
    ) -> None:
        self.port, self.timeout, self.max_bytes = port, timeout, max_bytes

    async def _one(self, session: aiohttp.ClientSession, pod: PodRef) -> tuple[float, float, float] | str:
        if not pod.ip:
            return "no pod IP"
        try:
            async with session.get(f"http://{pod.ip}:{self.port}/metrics", allow_redirects=False) as response:
                if response.status != 200:
                    return http_failure(response.status)
                body = await read_capped(response, self.max_bytes, "/metrics")
            return parse_router_metrics(body.decode())
        except (ValueError, UnicodeDecodeError):
            return "malformed /metrics"
        except (aiohttp.ClientError, TimeoutError, Refused) as exc:
            return client_failure(exc, self.timeout)

    async def read(self, targets: Sequence[Target]) -> dict[tuple[str, str], RouterSample]:
        """One sample per target with a router: sums over its ready router pods; an error when one of
        them does not answer (its held requests would go unseen) or none is ready."""
        asked = [(t, p) for t in targets if t.routers for p in t.routers]
        results: list[tuple[float, float, float] | str] = []
        if asked:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                results = list(await asyncio.gather(*(self._one(session, p) for _, p in asked)))
        got: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
        failed: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (t, pod), result in zip(asked, results, strict=True):
            if isinstance(result, str):
                failed[t.key].append(f"{pod.name}: {result}")
            else:
                got[t.key].append(result)
        out = {}
        for t in targets:
            if t.routers is None:
                continue
            if t.key in got and not failed.get(t.key):
                waiting, in_flight, arrivals = (sum(x) for x in zip(*got[t.key], strict=True))
                out[t.key] = RouterSample(waiting, in_flight, arrivals, len(got[t.key]))
            else:  # a ready router that does not answer may hold requests: no reading, rather than half
                why = "; ".join(failed[t.key][:3]) if failed.get(t.key) else "no router pod is ready"
                out[t.key] = RouterSample(error=why)
        return out
