"""A simulated cluster: a Deployment of vLLM pods behind a router, Prometheus scrapes, and a scaler.

Time advances in 1 s slices. Within a slice, arrivals are routed at their own times (the target engine is
advanced to the arrival first). At the end of a slice: engines advance, pods become ready or finish
draining, Prometheus scrapes the pods whose offset falls due, and the policy runs when its interval
falls due, creating pods (ready after a log-normal cold start) or removing them (no new traffic; drain
up to the grace period; what still runs then is killed). Billing runs from pod creation to deletion.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from qwen_operator.idle import RouterSample
from qwen_router import picker
from qwen_tools.sim.engine import KILLED, REJECTED, TIMEOUT, Engine, Request
from qwen_tools.sim.gpus import GPU
from qwen_tools.sim.policies import Policy, Sample, View
from qwen_tools.sim.trace import Trace


@dataclass(frozen=True)
class ColdStart:
    """Pod created -> ready: log-normal with this median and 95th percentile (seconds), or the sum of
    independent stages (``parts``; the median and p95 are then the sum's, estimated once)."""

    median: float = 150.0
    p95: float = 240.0
    parts: tuple[ColdStart, ...] = ()

    def sample(self, rng: random.Random) -> float:
        if self.parts:
            return sum(part.sample(rng) for part in self.parts)
        sigma = math.log(self.p95 / self.median) / 1.6448536269514722
        return rng.lognormvariate(math.log(self.median), sigma)

    @staticmethod
    def of(*parts: ColdStart) -> ColdStart:
        rng = random.Random(0)
        draws = sorted(sum(p.sample(rng) for p in parts) for _ in range(4000))
        return ColdStart(draws[2000], draws[3800], parts)


# Where a Qwen2.5-7B replica's cold start goes (assumptions, stated; not measured on a GPU here):
# - START: the pod scheduled on a node that has the vLLM image, the container started, the engine up
#   (weights from a local file into the GPU at a few GB/s: ~5-10 s for 15 GB; CUDA graph capture and
#   warm-up: tens of seconds, as vLLM logs it): median 40 s, p95 75 s.
# - HUB: the weights (15.2 GB in bf16) downloaded from the Hugging Face Hub by each new pod into its own
#   emptyDir, at ~100 MB/s median and ~40 MB/s at p95 (shared egress, several pods at once, the Hub's
#   rate limits): median 150 s, p95 380 s.
# - CACHE: the same weights read from a shared ReadWriteMany volume the operator's download Job filled
#   (spec.model.source.hub.cache.prefill): NFS/EFS-class throughput of ~300 MB/s median, ~125 MB/s at
#   p95: median 50 s, p95 120 s.
START = ColdStart(40, 75)
HUB_DOWNLOAD = ColdStart(150, 380)
CACHE_READ = ColdStart(50, 120)

COLD_STARTS = {
    "fast": ColdStart(45, 72),
    "default": ColdStart(150, 240),
    "slow": ColdStart(360, 576),
    "hub": ColdStart.of(START, HUB_DOWNLOAD),  # every replica downloads the weights
    "cached": ColdStart.of(START, CACHE_READ),  # a prefilled model cache (docs/install.md)
}


@dataclass(frozen=True)
class Nodes:
    """GPU nodes that a node autoscaler (cluster-autoscaler, Karpenter) adds when pods are Pending: a
    launch finds a free GPU on a node that exists with probability ``1 - new_node``; otherwise it waits
    for a node, which holds ``per_node`` GPUs: the pods launched while that node is on its way (and has
    room) wait for the same node. A node takes ``provision`` (log-normal, heavy-tailed: median 2 min,
    p95 7 min, as cloud GPU capacity is). Assumptions, not measurements: docs/benchmark.md."""

    new_node: float = 0.6
    per_node: int = 4
    provision: ColdStart = ColdStart(120, 420)


# The cold start of a pod that also waits for its node: the node's provisioning, then the pod's own.
NODES = Nodes()


@dataclass
class Pod:
    name: str
    created: float
    ready_at: float
    engine: Engine
    offset: int
    removed: float | None = None  # stopped taking traffic (scale-down)
    deleted: float | None = None
    sample: Sample | None = None
    scheduled: float = 0.0  # when its node was there (created + the wait for a node)
    busy_mark: float = 0.0
    seen: int = 0  # finished requests already handed back to their closed-loop clients

    def ready(self, now: float) -> bool:
        return self.removed is None and self.ready_at <= now


@dataclass
class Point:
    """One row of the timeline (every ``Cluster.timeline_every`` seconds)."""

    t: float
    arrivals: int
    desired: int
    ready: int
    pods: int
    running: float
    waiting: float
    kv: float


@dataclass
class Result:
    policy: str
    requests: list[Request]
    pods: list[Pod]
    actions: list[tuple[float, int, int]]  # (time, from, to)
    timeline: list[Point]
    end: float  # billing horizon
    reasons: list[tuple[float, str]] = field(default_factory=list)
    score_from: float = 0.0  # the burn-in: what comes before is neither scored nor billed

    @property
    def gpu_hours(self) -> float:
        start = self.score_from
        billed = sum(
            max(0.0, min(p.deleted if p.deleted is not None else self.end, self.end) - max(p.created, start))
            for p in self.pods
        )
        return billed / 3600

    @property
    def scored(self) -> list[Request]:
        """The requests the SLO is judged on: those that arrived after the burn-in."""
        if self.score_from <= 0:
            return self.requests
        return [r for r in self.requests if r.arrival >= self.score_from]


@dataclass
class Settings:
    gpu: GPU
    min_replicas: int = 1
    max_replicas: int = 5
    start_replicas: int = 1
    router: str = "random"  # see ROUTERS
    scrape_interval: int = 15
    cold_start: ColdStart = field(default_factory=ColdStart)
    grace_seconds: float = 150.0  # terminationGracePeriodSeconds of the rendered Deployment
    timeout: float = 120.0
    seed: int = 0
    tail: float = 180.0  # keep simulating (and billing) this long after the last arrival
    # The start pods have served the trace's first minutes before t = 0 (neither scored nor billed), so
    # a run starts as a running service does: engines busy, only the controller new.
    warmup: float = 120.0
    # A burn-in: requests that arrive before this are not scored, and pods are billed from it on, so a
    # policy is judged on how it runs, not on how it starts.
    score_from: float = 0.0
    nodes: Nodes | None = None  # pods may wait for a node to be provisioned (None: a GPU is free)
    # A closed loop: this many clients, each sending its next request (sizes from the trace, in order)
    # an exponential think time (mean ``think``) after its last one ended; 0: the trace's arrival times.
    clients: int = 0
    think: float = 10.0


# How requests reach the pods:
# - "random": a Kubernetes Service (kube-proxy picks a ready pod at random; with none ready the
#   connection is refused: the request fails at once);
# - "least": a gateway that sends each request to the pod with the fewest outstanding and holds
#   requests while no pod is ready (as Knative's activator or a peer's gateway does);
# - "builtin": spec.routing.mode Builtin, our router's own picking code (qwen_router.picker: prefix
#   affinity with bounded load, else the least prompt work pending) and its bounded hold queue.
ROUTERS = ("random", "least", "builtin")
HOLD_QUEUE = 1000  # the builtin router's spec.routing.router.queueSize default: past it, 429
# The router names a request's prefix by its prompt's first PREFIX_CHARS characters: at ~4 characters
# a token, a shared system prompt names it when it is at least this many tokens long; a shorter one is
# followed by the request's own text, which makes the name unique to the request.
PREFIX_TOKENS = picker.PREFIX_CHARS // 4


class Cluster:
    timeline_every = 10

    def __init__(self, trace: Trace, policy: Policy, settings: Settings) -> None:
        self.trace, self.policy, self.s = trace, policy, settings
        # Common random numbers: one stream per source of chance, so that every policy run on the same
        # seed meets the same cold start at the same launch index, the same scrape offsets in the order
        # pods are made, and its own routing draws apart from both.
        self.cold_rng = random.Random(f"{settings.seed}:cold-start")
        self.scrape_rng = random.Random(f"{settings.seed}:scrape-offset")
        self.route_rng = random.Random(f"{settings.seed}:routing")
        self._observe = getattr(policy, "observe_second", None)
        self.pods: list[Pod] = []
        self.live: list[Pod] = []
        self.replicas = settings.start_replicas
        if settings.router not in ROUTERS:
            raise ValueError(f"unknown router {settings.router!r}; choose from {', '.join(ROUTERS)}")
        self.gateway: deque[Request] = deque()  # requests held for a ready pod (not with "random")
        self.picker = picker.Picker()
        self.requests: list[Request] = []
        self.actions: list[tuple[float, int, int]] = []
        self.timeline: list[Point] = []
        self._n = 0
        self._rows = list(trace.rows())
        self._next = 0  # the next arrival
        self._arrivals = 0  # arrivals since the last timeline point
        self.second = 0
        self.node_rng = random.Random(f"{settings.seed}:nodes")
        self._coming: list[tuple[float, int]] = []  # nodes on their way: (ready at, GPUs not yet taken)
        self.client_rng = random.Random(f"{settings.seed}:clients")
        self._due: list[tuple[float, int]] = []  # closed loop: (next send, client)
        for client in range(settings.clients):
            self._due.append((self.client_rng.uniform(0, settings.think), client))
        heapq.heapify(self._due)
        warmup = 0.0 if settings.clients else min(settings.warmup, trace.duration if len(trace) else 0.0)
        for _ in range(settings.start_replicas):
            self._create(0.0, warm=True, engine_since=-warmup)
        self._warm_up(warmup)

    # ------------------------------------------------------------------------------ pods

    def _node_wait(self, now: float) -> float:
        """Seconds a new pod waits for its GPU: none when one is free, else until its node is up (one
        already on its way, while it has room, or a new one)."""
        nodes = self.s.nodes
        if nodes is None or self.node_rng.random() >= nodes.new_node:
            return 0.0
        self._coming = [(at, room) for at, room in self._coming if at > now and room > 0]
        if self._coming:
            at, room = self._coming[0]
            self._coming[0] = (at, room - 1)
            return at - now
        at = now + nodes.provision.sample(self.node_rng)
        self._coming.append((at, nodes.per_node - 1))
        return at - now

    def _create(self, now: float, warm: bool = False, engine_since: float | None = None) -> None:
        self._n += 1
        node_wait = 0.0 if warm else self._node_wait(now)
        ready_at = now if warm else now + node_wait + self.s.cold_start.sample(self.cold_rng)
        pod = Pod(
            f"pod-{self._n}",
            now,
            ready_at,
            Engine(self.s.gpu, now if engine_since is None else engine_since),
            self.scrape_rng.randrange(self.s.scrape_interval),
            scheduled=now + node_wait,
        )
        self.pods.append(pod)
        self.live.append(pod)

    def _warm_up(self, warmup: float) -> None:
        """Replay the first ``warmup`` seconds of the trace on the start pods, shifted before t = 0."""
        if warmup <= 0 or not self.live:
            return
        rng = random.Random(f"{self.s.seed}:warm-up")
        for i, (at, _, _) in enumerate(self._rows):
            if at >= warmup:
                break
            t = at - warmup
            pod = rng.choice(self.live)
            pod.engine.advance(t)
            pod.engine.add(self._request(-1 - i, i, t))
        for pod in self.live:
            pod.engine.advance(0.0)
            pod.busy_mark = pod.engine.busy_seconds  # the first scrape measures from t = 0

    def _victims(self, now: float, count: int) -> list[Pod]:
        """Which pods a ReplicaSet removes: unready ones first; then, with pod-deletion-cost, the idlest
        by the last scrape (what our scaler annotates); otherwise the newest."""
        active = [p for p in self.live if p.removed is None]
        unready = sorted((p for p in active if not p.ready(now)), key=lambda p: -p.created)
        ready = [p for p in active if p.ready(now)]
        if self.policy.deletion_cost:

            def cost(p: Pod) -> float:
                s = p.sample
                return math.inf if s is None else 100 * (s.running + s.waiting) + 100 * s.kv

            ready.sort(key=cost)
        else:
            ready.sort(key=lambda p: -p.created)
        return (unready + ready)[:count]

    def _scale(self, now: float, desired: int) -> None:
        active = [p for p in self.live if p.removed is None]
        if desired == len(active):
            return
        if desired > len(active):
            for _ in range(desired - len(active)):
                self._create(now)
        else:
            for pod in self._victims(now, len(active) - desired):
                pod.removed = now
                if pod.ready_at > now:  # never started: gone at once
                    pod.deleted = now
                    self.live.remove(pod)

    def _ready_pods(self, now: float) -> list[Pod]:
        return [p for p in self.live if p.ready(now)]

    # ------------------------------------------------------------------------------ traffic

    def _route(self, req: Request) -> None:
        self.requests.append(req)
        ready = self._ready_pods(req.arrival)
        if not ready:
            self._hold(req)
            return
        if self.s.router == "random":
            pod = self.route_rng.choice(ready)
            pod.engine.advance(req.arrival)
        else:
            pod = self._pick(ready, req, req.arrival)
        pod.engine.add(req)

    def _pick(self, ready: list[Pod], req: Request, now: float) -> Pod:
        """The least loaded pod ("least"), or the one our router's picker chooses, knowing what it
        knows of each engine: its requests outstanding, the prompt tokens of those without a first
        token yet (the router estimates them from the requests' sizes) and its KV-cache use."""
        for p in ready:
            p.engine.advance(now)
        if self.s.router == "least":
            return min(ready, key=lambda p: (p.engine.num_running + p.engine.num_waiting, p.name))
        by_name = {p.name: p for p in ready}
        self.picker.update(dict.fromkeys(by_name, ""))
        for name, engine in self.picker.engines.items():
            e = by_name[name].engine
            engine.outstanding = e.num_running + e.num_waiting
            engine.kv = e.kv_usage
            engine.pending = sum(r.prompt for r in (*e.waiting, *e.running) if r.first_token is None)
        shared = req.prefix and req.prefix_len >= PREFIX_TOKENS
        choice = self.picker.pick(prefix=f"app-{req.prefix}" if shared else f"request-{req.id}")
        assert choice is not None
        return by_name[choice.engine.name]

    def _hold(self, req: Request) -> None:
        """No pod is ready: a Service refuses the connection; a router or gateway holds the request
        (the builtin router up to its queue size, then 429)."""
        full = self.s.router == "builtin" and len(self.gateway) >= HOLD_QUEUE
        if self.s.router == "random" or full:
            req.outcome = REJECTED
            self._ended(req, req.arrival)
            return
        self.gateway.append(req)

    def _flush_gateway(self, now: float) -> None:
        while self.gateway:
            req = self.gateway[0]
            if req.deadline <= now:
                self.gateway.popleft()
                req.outcome = TIMEOUT
                self._ended(req, now)
                continue
            ready = self._ready_pods(now)
            if not ready:
                return
            self.gateway.popleft()
            self._pick(ready, req, now).engine.add(req)

    # ------------------------------------------------------------------------------ the loop

    @property
    def end(self) -> float:
        """The billing horizon: the last arrival plus the tail."""
        return (self.trace.duration if len(self.trace) else 0.0) + self.s.tail

    @property
    def arrived(self) -> int:
        """Requests that have arrived so far."""
        return self._next

    @property
    def done(self) -> bool:
        return self.second >= math.ceil(self.end)

    def _request(self, number: int, row: int, at: float) -> Request:
        """Request ``number``: the trace's row ``row`` (its sizes and shared prefix), arriving at ``at``."""
        _, prompt, output = self._rows[row]
        prefix, prefix_len = self.trace.prefix(row)
        return Request(number, at, prompt, output, at + self.s.timeout, prefix=prefix, prefix_len=prefix_len)

    def _arrive(self, t1: float) -> None:
        """Route the requests that arrive before ``t1``."""
        rows = self._rows
        if self.s.clients:
            while self._due and self._due[0][0] < t1 and rows:
                at, client = heapq.heappop(self._due)
                req = self._request(self._next, self._next % len(rows), at)
                req.user = client
                self._route(req)
                self._next += 1
                self._arrivals += 1
            return
        while self._next < len(rows) and rows[self._next][0] < t1:
            self._route(self._request(self._next, self._next, rows[self._next][0]))
            self._next += 1
            self._arrivals += 1

    def _ended(self, req: Request, now: float) -> None:
        """A closed-loop client whose request ended thinks, then sends its next one (until the trace's
        duration)."""
        if req.user < 0:
            return
        ended = req.finish if req.finish is not None else now
        at = max(now, ended + self.client_rng.expovariate(1 / self.s.think))
        if at < self.trace.duration:
            heapq.heappush(self._due, (at, req.user))

    def _hand_back(self, now: float) -> None:
        for pod in self.pods if self.s.clients else ():
            finished = pod.engine.finished
            for req in finished[pod.seen :]:
                self._ended(req, now)
            pod.seen = len(finished)

    def step(self) -> None:
        """Simulate the next second."""
        self.second += 1
        t1 = float(self.second)
        self._arrive(t1)
        for pod in self.live:
            pod.engine.advance(t1)
        self._lifecycle(t1)
        self._flush_gateway(t1)
        self._hand_back(t1)
        self._scrape(self.second)
        if self._observe is not None:  # what the activator and queue-proxies report each second
            ready = self._ready_pods(t1)
            self._observe(
                t1, sum(p.engine.num_running + p.engine.num_waiting for p in ready) + len(self.gateway)
            )
        if self.second % max(1, round(self.policy.interval)) == 0:
            self._evaluate(t1)
        if self.second % self.timeline_every == 0:
            self._record(t1, self._arrivals)
            self._arrivals = 0

    def result(self) -> Result:
        """The outcome so far; at the horizon, whatever still runs is neither finished nor killed."""
        for pod in self.live:
            pod.engine.advance(float(self.second))
        for req in self.gateway:
            req.outcome = req.outcome or TIMEOUT
        reasons = getattr(self.policy, "reasons", [])
        return Result(
            self.policy.name,
            self.requests,
            self.pods,
            self.actions,
            self.timeline,
            self.end,
            reasons,
            self.s.score_from,
        )

    def run(self, progress: Callable[[float], None] | None = None) -> Result:
        while not self.done:
            self.step()
            if progress is not None and self.second % 60 == 0:
                progress(self.second / self.end)
        return self.result()

    def _lifecycle(self, now: float) -> None:
        for pod in list(self.live):
            if pod.removed is None:
                continue
            if pod.engine.idle or now - pod.removed >= self.s.grace_seconds:
                pod.engine.abort_all(KILLED)
                pod.deleted = now
                self.live.remove(pod)

    def _scrape(self, second: int) -> None:
        interval = self.s.scrape_interval
        for pod in self.live:
            if pod.ready(second) and (second - pod.offset) % interval == 0:
                e = pod.engine
                busy = min(1.0, (e.busy_seconds - pod.busy_mark) / interval)
                pod.busy_mark = e.busy_seconds
                pod.sample = Sample(
                    e.num_running, e.num_waiting, e.kv_usage, busy, float(second), e.vllm_totals()
                )

    def _evaluate(self, now: float) -> None:
        ready = [p for p in self.live if p.ready(now)]
        view = View(
            now,
            self.replicas,
            tuple(p.name for p in ready),
            {p.name: p.sample for p in ready if p.sample is not None},
            self.s.gpu.max_num_seqs,
            tuple(p.ready_at - p.created for p in ready),
            self._router_sample(),
            tuple(p.scheduled - p.created for p in ready),
            sum(1 for p in self.live if p.scheduled > now),
        )
        desired = self.policy.desired(view)
        if desired != self.replicas:
            self.actions.append((now, self.replicas, desired))
            self.replicas = desired
        self._scale(now, self.replicas)

    def _router_sample(self) -> RouterSample | None:
        """Our router's own metrics, read as the scaler reads them (each evaluation, not scraped):
        requests held, requests at the pods, and its arrivals counter."""
        if self.s.router != "builtin":
            return None
        at_pods = sum(p.engine.num_running + p.engine.num_waiting for p in self.live)
        return RouterSample(float(len(self.gateway)), float(at_pods), float(self._next), routers=1)

    def _record(self, now: float, arrivals: int) -> None:
        ready = [p for p in self.live if p.ready(now)]
        self.timeline.append(
            Point(
                now,
                arrivals,
                self.replicas,
                len(ready),
                len(self.live),
                sum(p.engine.num_running for p in self.live),
                sum(p.engine.num_waiting for p in self.live) + len(self.gateway),
                sum(p.engine.kv_usage for p in ready) / len(ready) if ready else 0.0,
            )
        )


def simulate(trace: Trace, policy: Policy, settings: Settings) -> Result:
    return Cluster(trace, policy, settings).run()
