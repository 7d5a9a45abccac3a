"""One simulated vLLM V1 engine: continuous batching, chunked prefill, paged KV cache, preemption.

Each step, as vLLM V1's scheduler does it:

1. running requests first, in order: the next chunk of a (chunked) prefill, or one decode token;
   when the KV cache has no free block for it, the newest running request is preempted (its blocks
   freed; it goes back to the front of the queue and is recomputed later, prompt and output so far);
2. then, if nothing was preempted, waiting requests in arrival order, while the per-step token budget,
   ``max_num_seqs`` and the free KV blocks (16 tokens each) allow.

A step takes ``gpu.step_seconds(seqs, prefill tokens, decode context tokens)``. Stretches where every
running request decodes and nothing waits are advanced many steps at once (same result, far fewer
Python operations).

Prefix caching (vLLM's automatic prefix caching, on by default in V1), for requests that name a shared
prefix (a system prompt): the prefix's full blocks, once one request has computed them, stay in the
cache while any request uses them and, unused, until their blocks are needed (least recently used
first). A request whose prefix is cached when it is scheduled computes only the rest of its prompt.
Only whole blocks are shared, and a request always computes at least one token. KV usage counts blocks
in use, as vLLM's does (cached blocks no request uses are free).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qwen_operator.traffic import INF, EngineTotals, Histogram, Totals
from qwen_tools.sim.gpus import GPU, KV_BLOCK_TOKENS

DONE, TIMEOUT, KILLED, REJECTED = "done", "timeout", "killed", "rejected"

# vLLM 0.32's histogram bounds (tests/data/vllm-0.32-metrics-under-load.txt), seconds.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> Histogram:
    running, out = 0, []
    for le, n in zip((*bounds, INF), counts, strict=True):
        running += n
        out.append((le, float(running)))
    return Histogram(tuple(out))


def blocks_for(tokens: int) -> int:
    return -(-tokens // KV_BLOCK_TOKENS)


@dataclass(slots=True, eq=False)
class Request:
    id: int
    arrival: float
    prompt: int
    output: int
    deadline: float
    computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0
    blocks: int = 0
    first_token: float | None = None
    scheduled: float | None = None  # when it first left the waiting queue
    finish: float | None = None
    preemptions: int = 0
    outcome: str = ""
    prefix: int = 0  # a shared prefix's id (0: none) ...
    prefix_len: int = 0  # ... and its length in tokens (the prompt's first tokens)
    shared: int = 0  # KV blocks it uses from the prefix cache (not its own)
    user: int = -1  # a closed-loop client's number (-1: open loop)

    @property
    def prefill_len(self) -> int:
        """Tokens to compute before the next token can be sampled (the prompt, plus output on recompute)."""
        return self.prompt + self.generated

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        if self.finish is None or self.first_token is None or self.output < 2:
            return None
        return (self.finish - self.first_token) / (self.output - 1)


@dataclass(slots=True, eq=False)
class _Prefix:
    """A shared prefix's blocks in the cache: filled once its first request computed them."""

    blocks: int
    users: int = 0
    filled: bool = False


class Engine:
    """A vLLM replica's scheduler and KV cache on a simulated clock (seconds)."""

    def __init__(self, gpu: GPU, now: float = 0.0, max_model_len: int = 32768) -> None:
        self.gpu = gpu
        self.now = now
        self.max_model_len = max_model_len
        self.free = gpu.kv_blocks
        self.running: list[Request] = []
        self.waiting: deque[Request] = deque()
        self.finished: list[Request] = []
        self.busy_seconds = 0.0  # time spent in steps (a GPU-utilisation proxy)
        self.steps = 0
        self.preemptions = 0
        # What vLLM's /metrics counts: tokens, finished requests, and the TTFT and queue-time histograms
        # (per-bucket counts, not cumulative; vllm_totals() makes them what a scrape reads).
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.requests_done = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.queue_counts = [0] * (len(QUEUE_BUCKETS) + 1)
        self.tpot_counts = [0] * (len(TPOT_BUCKETS) + 1)
        self.ttft_sum = self.queue_sum = self.tpot_sum = 0.0  # the histograms' _sum (seconds)
        self.prefixes: OrderedDict[int, _Prefix] = OrderedDict()  # least recently used first
        self.unused_cached = 0  # blocks of cached prefixes no request uses (free, but hold KV)
        self.prefix_queries = self.prefix_hits = 0  # tokens (vllm:prefix_cache_queries / _hits)
        # vllm:inter_token_latency_seconds (each decode token after the first: its step's time) and
        # vllm:iteration_tokens_total (per step: the tokens it computed).
        self.itl_sum = 0.0
        self.itl_count = 0
        self.step_tokens = 0

    # ------------------------------------------------------------------------------ views

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return 1.0 - (self.free + self.unused_cached) / self.gpu.kv_blocks

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    # ------------------------------------------------------------------------------ requests

    def add(self, req: Request) -> None:
        """A request arrives (the engine must have been advanced to its arrival time)."""
        if self.idle and self.now < req.arrival:
            self.now = req.arrival
        total = req.prompt + req.output
        if total > self.max_model_len or blocks_for(total) > self.gpu.kv_blocks:
            self._end(req, REJECTED, req.arrival)  # vLLM answers 400: longer than the model or cache
            return
        self.waiting.append(req)

    def vllm_totals(self) -> Totals:
        """The cumulative counters and histograms a scrape of this replica's /metrics reads."""
        return Totals(
            float(self.prompt_tokens),
            float(self.generation_tokens),
            float(self.requests_done),
            _cumulative(TTFT_BUCKETS, self.ttft_counts),
            _cumulative(QUEUE_BUCKETS, self.queue_counts),
            _cumulative(TPOT_BUCKETS, self.tpot_counts),
            EngineTotals(
                self.itl_sum,
                float(self.itl_count),
                float(self.steps),
                float(self.step_tokens),
                float(self.prefix_queries),
                float(self.prefix_hits),
            ),
        )

    def _end(self, req: Request, outcome: str, when: float) -> None:
        req.outcome = outcome
        if req.scheduled is not None:
            # vLLM observes a request's queue time when it finishes (its finished-request stats), not
            # when it is scheduled: a scrape sees it only after the request is done.
            queued = req.scheduled - req.arrival
            self.queue_counts[bisect.bisect_left(QUEUE_BUCKETS, queued)] += 1
            self.queue_sum += queued
        if outcome == DONE:
            req.finish = when
            self.requests_done += 1
            tpot = req.tpot
            if tpot is not None:  # vLLM observes it for requests with two output tokens or more
                self.tpot_counts[bisect.bisect_left(TPOT_BUCKETS, tpot)] += 1
                self.tpot_sum += tpot
        self.free += req.blocks
        req.blocks = 0
        self._release(req)
        self.finished.append(req)

    def abort_all(self, outcome: str) -> list[Request]:
        """Everything still queued or running ends with ``outcome`` (a pod killed after its grace)."""
        gone = [*self.running, *self.waiting]
        for req in gone:
            self._end(req, outcome, self.now)
        self.running.clear()
        self.waiting.clear()
        return gone

    def _expire(self) -> None:
        """Clients give up at their deadline: vLLM aborts the request and frees its blocks."""
        if (waiting := self._unexpired(self.waiting)) is not None:
            self.waiting = deque(waiting)
        if (running := self._unexpired(self.running)) is not None:
            self.running = running

    def _unexpired(self, requests: Iterable[Request]) -> list[Request] | None:
        """End the requests past their deadline; the others, or None when none expired (no rebuild)."""
        now = self.now
        if all(r.deadline > now for r in requests):
            return None
        keep = []
        for r in requests:
            if r.deadline <= now:
                self._end(r, TIMEOUT, now)
            else:
                keep.append(r)
        return keep

    # ------------------------------------------------------------------------------ time

    def advance(self, until: float) -> None:
        """Run steps that start before ``until``; an idle engine's clock jumps to ``until``."""
        while self.now < until:
            self._expire()
            if self.idle:
                self.now = until
                return
            if not self.waiting and self._all_decoding():
                self._decode_run(until)
            else:
                self._step()

    def _all_decoding(self) -> bool:
        return all(r.generated > 0 and r.prefill_len - r.computed == 1 for r in self.running)

    # ------------------------------------------------------------------------------ the prefix cache

    def _reserve(self, need: int) -> bool:
        """Make ``need`` blocks free, evicting unused cached prefixes (least recently used first)."""
        if need <= self.free:
            return True
        if need > self.free + self.unused_cached:
            return False
        for pid in [pid for pid, p in self.prefixes.items() if p.users == 0]:
            entry = self.prefixes.pop(pid)
            self.unused_cached -= entry.blocks
            self.free += entry.blocks
            if need <= self.free:
                break
        return True

    def _attach(self, req: Request) -> int:
        """On leaving the queue: use the request's cached prefix (its tokens count as computed), or
        become the one that fills it. Returns blocks to allocate for the prefix now (a new entry)."""
        if req.prefix == 0 or req.computed or req.shared:
            return 0
        blocks = min(req.prefix_len, req.prompt - 1) // 16
        if blocks == 0:
            return 0
        entry = self.prefixes.get(req.prefix)
        if entry is not None and entry.filled:
            if entry.users == 0:
                self.unused_cached -= entry.blocks
            entry.users += 1
            self.prefixes.move_to_end(req.prefix)
            req.shared = min(blocks, entry.blocks)
            req.computed = req.shared * 16
            return 0
        if entry is not None:  # another request is computing it: no sharing yet (vLLM hashes full blocks)
            return 0
        self.prefixes[req.prefix] = _Prefix(blocks, users=1)
        req.shared = blocks
        return blocks

    def _release(self, req: Request) -> None:
        if not req.shared:
            return
        entry = self.prefixes.get(req.prefix)
        req.shared = 0
        if entry is None:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        if entry.filled:
            self.unused_cached += entry.blocks
        else:  # its filler left before computing it: nothing to keep
            del self.prefixes[req.prefix]
            self.free += entry.blocks

    def _filled(self, req: Request) -> None:
        if req.shared and req.computed >= req.shared * 16:
            entry = self.prefixes.get(req.prefix)
            if entry is not None:
                entry.filled = True

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.free += victim.blocks
        victim.blocks = 0
        self._release(victim)
        victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)

    def _step(self) -> None:
        gpu = self.gpu
        budget = gpu.max_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        prefill_tokens = context = 0
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            remaining = req.prefill_len - req.computed
            n = min(remaining, budget)
            need = max(0, blocks_for(req.computed + n) - req.shared - req.blocks)
            while not self._reserve(need):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            if req not in self.running:
                break
            self.free -= need
            req.blocks += need
            scheduled.append((req, n))
            budget -= n
            if remaining == 1 and req.generated > 0:
                context += req.computed  # a decode step reads the whole context
            else:
                prefill_tokens += n
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < gpu.max_num_seqs:
                req = self.waiting[0]
                fresh = self._attach(req)
                n = min(req.prefill_len - req.computed, budget)
                need = fresh + max(0, blocks_for(req.computed + n) - req.shared - req.blocks)
                if not self._reserve(need):
                    # Not scheduled: it looks its prefix up again next time.
                    if fresh:
                        del self.prefixes[req.prefix]
                        req.shared = 0
                    else:
                        self._release(req)
                        req.computed = 0
                    break
                self.waiting.popleft()
                # vLLM looks every request up in the prefix cache when it is scheduled from the queue
                # (again after a preemption), counting its prompt's tokens and those found cached.
                self.prefix_queries += req.prompt
                if req.prefix and not fresh:
                    self.prefix_hits += req.computed
                self.free -= need
                req.blocks += need - fresh  # a new prefix's blocks belong to the cache
                self.running.append(req)
                if req.scheduled is None:
                    req.scheduled = self.now
                scheduled.append((req, n))
                budget -= n
                prefill_tokens += n
        if not scheduled:  # nothing fits (cannot happen with admission checks): wait for time to pass
            self.now += gpu.floor_s
            return
        took = gpu.step_seconds(len(scheduled), prefill_tokens, context)
        self.now += took
        self.busy_seconds += took
        self.steps += 1
        now = self.now
        for req, n in scheduled:
            self.step_tokens += n
            if req.generated > 0 and req.computed + n >= req.prefill_len:  # a decode token (not the first)
                self.itl_sum += took
                self.itl_count += 1
            req.computed += n
            if req.shared:
                self._filled(req)
            if req.computed >= req.prefill_len:  # a token is sampled at the end of this step
                req.generated += 1
                self.generation_tokens += 1
                if req.first_token is None:
                    req.first_token = now
                    self.prompt_tokens += req.prompt
                    self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, now - req.arrival)] += 1
                    self.ttft_sum += now - req.arrival
                if req.generated >= req.output:
                    self.running.remove(req)
                    self._end(req, DONE, now)

    def _decode_run(self, until: float) -> None:
        """``k`` decode steps at once, ending before the first event (finish, deadline, full cache)."""
        gpu, running = self.gpu, self.running
        n = len(running)
        k = min(r.output - r.generated for r in running)
        # Each step computes the KV of every sequence's last token and samples its next one.
        # Blocks: each sequence needs one more every 16 tokens; stay within what is free.
        spare = self.free / n - 1
        k = min(k, max(1, int(spare * KV_BLOCK_TOKENS))) if spare >= 1 else 1
        base = gpu.floor_s + gpu.per_seq_s * n
        per_ctx = gpu.context_s_per_token
        context = sum(r.computed for r in running)
        horizon = min(until, min(r.deadline for r in running)) - self.now

        def total(steps: int) -> float:
            return steps * base + per_ctx * (steps * context + n * steps * (steps - 1) / 2)

        if k > 1 and total(k) > horizon:
            # Largest k with total(k) <= horizon (the quadratic's root), at least one step.
            a = per_ctx * n / 2
            b = base + per_ctx * context - a
            fit = (-b + math.sqrt(b * b + 4 * a * max(horizon, 0.0))) / (2 * a) if a > 0 else horizon / b
            k = max(1, min(k, int(fit)))
        if k == 1:
            self._step()
            return
        took = total(k)
        if k > 1 and self.free < sum(blocks_for(r.computed + k) - r.shared - r.blocks for r in running):
            self._step()  # the conservative bound was not enough; go step by step
            return
        self.now += took
        self.busy_seconds += took
        self.steps += k
        now = self.now
        done = []
        self.generation_tokens += k * n
        self.itl_sum += n * took
        self.itl_count += n * k
        self.step_tokens += n * k
        for r in running:
            r.computed += k
            r.generated += k
            need = blocks_for(r.computed) - r.shared - r.blocks
            self.free -= need
            r.blocks += need
            if r.generated >= r.output:
                done.append(r)
        for r in done:
            running.remove(r)
            self._end(r, DONE, now)
