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
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_client.parser import text_string_to_metric_families
from urllib3.util.retry import Retry

from qwen_operator import telemetry
from qwen_operator.scaling import Observation, PodSample
from qwen_operator.traffic import TRAFFIC_WINDOW, TRAFFIC_WINDOW_SECONDS, Histogram, Totals, Traffic

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

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def observation(self, samples: Mapping[str, PodSample], error: str | None = None) -> Observation:
        names = tuple(p.name for p in self.pods)
        kept = {pod: s for pod, s in samples.items() if pod in names}
        return Observation(
            replicas=self.replicas, ready_pods=names, samples=kept, error=error, cold_starts=self.cold_starts
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
            traffic = Traffic(window, *self._counts(), *self._histograms())
        return PodSample(self.running, self.waiting, sum(kv) / len(kv) if kv else None, age, traffic)

    def totals(self) -> Totals | None:
        return Totals(*self._counts(), *self._histograms()) if self.counters else None

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
    elif name in (PROMPT_TOKENS, GENERATION_TOKENS, REQUESTS):
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


def _parse(text: str, model_name: str | None) -> _PodTotals:
    acc = _PodTotals()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if model_name is not None and sample.labels.get("model_name", model_name) != model_name:
                continue
            _accumulate(acc, sample.name, float(sample.value), sample.labels.get("le"))
    return acc


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
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.limit = asyncio.Semaphore(concurrency)
        self.monotonic = monotonic
        # Each pod's last counters (by name and IP: a new pod of the same name starts afresh), and when
        # they were read: the next scrape's increase over them is its traffic.
        self.previous: dict[tuple[str, str], tuple[float, Totals]] = {}

    async def _scrape(self, session: aiohttp.ClientSession, pod: PodRef) -> PodSample | str:
        if not pod.ip:
            return "no pod IP"
        url = f"http://{pod.ip}:{self.port}/metrics"
        try:
            async with self.limit, session.get(url) as response:
                if response.status != 200:
                    return f"HTTP {response.status}"
                text = await response.text()
            sample, totals = parse_vllm_totals(text)
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
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

    url: str
    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False


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
    }


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class PrometheusSource:
    """Batched PromQL: the number of queries per evaluation does not grow with the number of services."""

    name = "prometheus"

    def __init__(
        self,
        config: PrometheusConfig,
        service_label: str = "serving_qwenops_io_service",
        timeout: float = 5.0,
        connect: Callable[[PrometheusConfig, float], PrometheusConnect] | None = None,
    ) -> None:
        self.config = config
        self.service_label = service_label
        self.timeout = timeout
        self.queries = queries(service_label)
        self.client = (connect or connect_prometheus)(config, timeout)

    def _query(self, promql: str) -> list[dict[str, Any]]:
        result = self.client.custom_query(promql, params={"timeout": f"{max(1, int(self.timeout * 1000))}ms"})
        if not isinstance(result, list):
            raise ValueError(f"unexpected answer: {str(result)[:100]}")
        return result

    async def _all(self) -> dict[str, list[dict[str, Any]]]:
        names = list(self.queries)
        answers = await asyncio.gather(*(asyncio.to_thread(self._query, self.queries[n]) for n in names))
        return dict(zip(names, answers, strict=True))

    async def observe(self, targets: Sequence[Target]) -> dict[tuple[str, str], Observation]:
        started = time.monotonic()
        telemetry.QUERIES.labels(self.name).inc(len(self.queries))
        try:
            answers = await asyncio.wait_for(self._all(), self.timeout)
        except Exception as exc:  # any failure of the source holds replicas; it never stops the scaler
            telemetry.QUERY_ERRORS.labels(self.name).inc()
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            error = f"Prometheus at {self.config.url} failed: {reason}"[:300]
            return {t.key: t.observation({}, error) for t in targets}
        finally:
            telemetry.QUERY_SECONDS.labels(self.name).observe(time.monotonic() - started)
        by_pod = self._split(answers)
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


def connect_prometheus(config: PrometheusConfig, timeout: float) -> PrometheusConnect:
    session = requests.Session()  # PrometheusConnect ignores disable_ssl when given a session
    session.verify = False if config.insecure_skip_verify else (config.ca_file or True)
    session.max_redirects = 0  # never follow Prometheus elsewhere (with or without its credentials)
    headers = {"Authorization": f"Bearer {config.bearer_token}"} if config.bearer_token else None
    auth = (config.username, config.password or "") if config.username else None
    return PrometheusConnect(
        url=config.url,
        headers=headers,
        retry=Retry(total=0),  # the next evaluation is the retry; a deadline is a deadline
        auth=auth,
        session=session,
        timeout=math.ceil(timeout),
    )
