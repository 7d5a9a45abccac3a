"""What the load test sends and how it measures it (no sockets, no clock, no Locust: those are the
locustfile's).

- Workloads: a mix of realistic chat prompts with their output lengths, or a replay of a trace in the
  Azure LLM-inference format (``TIMESTAMP,ContextTokens,GeneratedTokens``) at a chosen speed-up.
- Load plans: ``"30s:2,2m:12,60s:12,90s:2"``, a stepped number of users (baseline, step-up, peak hold).
- Streaming: the OpenAI chat-completions server-sent events, read into one :class:`Result` per request
  (time to first token, time per output token, tokens, error).
- Summaries: percentiles of TTFT, TPOT and end-to-end latency, tokens/s and the error count.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen_tools.sim import trace as traces

# Words for padding prompts up to a token length (about one token per word for BPE tokenizers).
_FILLER_TEXT = (
    "The cluster autoscaler adds nodes when pods cannot be scheduled and removes nodes that stay "
    "underused. Each inference server keeps a cache of attention keys and values for the requests it "
    "serves, and the cache fills as prompts grow longer and more requests run at once. Operators "
    "watch queue length, cache usage and time to first token, and add replicas before users notice "
    "delay. Quarterly revenue grew in every region, led by subscriptions, while support costs fell "
    "after the new self-service portal launched. The committee asks for a summary of risks, owners "
    "and dates."
)
_FILLER = tuple(_FILLER_TEXT.split())


@dataclass(frozen=True)
class Prompt:
    """One kind of request in the mix: the user's text, context padding, and the output length range."""

    kind: str
    text: str
    context_words: int = 0
    min_output: int = 32
    max_output: int = 256
    weight: float = 1.0


# A realistic mix: short chat, questions over a pasted document, summaries, code, and long answers.
MIX: tuple[Prompt, ...] = (
    Prompt("chat", "Hi! Can you suggest three names for a bakery that sells sourdough?", 0, 20, 120, 3),
    Prompt("chat", "What is the difference between a process and a thread? Keep it short.", 0, 40, 200, 3),
    Prompt(
        "chat", "Write a polite email declining a meeting invitation for Friday afternoon.", 0, 60, 220, 2
    ),
    Prompt("qa", "Using only the document above, who owns the risks and by when?", 400, 16, 96, 2),
    Prompt("summary", "Summarize the text above in five bullet points.", 900, 80, 250, 1.5),
    Prompt("code", "Write a Python function that merges two sorted lists, with tests.", 0, 150, 400, 1.5),
    Prompt("code", "Explain what this configuration does and suggest improvements.", 250, 100, 300, 1),
    Prompt("long", "Draft a one-page project plan for migrating a web shop to Kubernetes.", 0, 300, 700, 0.5),
)


@dataclass(frozen=True)
class Request:
    """One chat request to send: when (seconds after the start; None: at once), prompt, output tokens."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int
    kind: str
    at: float | None = None
    prompt_tokens_hint: int | None = None

    def payload(self, model: str, ignore_eos: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": list(self.messages),
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:  # vLLM's extension: generate exactly max_tokens, as a trace replay needs
            body["ignore_eos"] = True
        return body


def filler(words: int, rng: random.Random) -> str:
    """``words`` words of plausible text, starting at a random place in the filler passage."""
    start = rng.randrange(len(_FILLER))
    return " ".join(_FILLER[(start + i) % len(_FILLER)] for i in range(words))


def _clamp(value: int, limit: int | None) -> int:
    return value if limit is None else max(1, min(value, limit))


def from_mix(
    rng: random.Random, max_prompt_tokens: int | None = None, max_output_tokens: int | None = None
) -> Request:
    """A request drawn from :data:`MIX` by weight."""
    prompt = rng.choices(MIX, weights=[p.weight for p in MIX])[0]
    words = _clamp(prompt.context_words, max_prompt_tokens) if prompt.context_words else 0
    text = f"{filler(words, rng)}\n\n{prompt.text}" if words else prompt.text
    output = _clamp(rng.randint(prompt.min_output, prompt.max_output), max_output_tokens)
    return Request(({"role": "user", "content": text},), output, prompt.kind)


def from_trace(
    path: str | Path,
    speedup: float = 1.0,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    seed: int = 0,
) -> list[Request]:
    """Every request of an Azure-format trace, arriving ``speedup`` times faster, with a prompt of about
    the recorded context length (clamped to ``max_prompt_tokens``) and the recorded output length."""
    if speedup <= 0:
        raise ValueError(f"speed-up must be positive, not {speedup}")
    rng = random.Random(seed)
    loaded = traces.load(path)
    out = []
    for at, context, output in loaded.rows():
        words = _clamp(context, max_prompt_tokens)
        message = {"role": "user", "content": filler(words, rng)}
        out.append(Request((message,), _clamp(output, max_output_tokens), "trace", at / speedup, words))
    return out


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def seconds(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``2h`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 2m, 1h)")
    return float(match[1]) * _UNIT[match[2]]


@dataclass(frozen=True)
class Stage:
    duration: float
    users: int


def parse_plan(text: str) -> list[Stage]:
    """``"30s:2,2m:12,60s:2"``: hold 2 users for 30 s, then 12 for 2 minutes, then 2 for 60 s."""
    stages = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        duration, sep, users = part.partition(":")
        if not sep or not users.strip().isdigit():
            raise ValueError(f"plan stage {part!r}: expected DURATION:USERS, e.g. 2m:12")
        stages.append(Stage(seconds(duration), int(users)))
    if not stages:
        raise ValueError("empty load plan")
    return stages


def users_at(plan: Sequence[Stage], elapsed: float) -> int | None:
    """How many users the plan wants ``elapsed`` seconds in; None once it is over."""
    for stage in plan:
        if elapsed < stage.duration:
            return stage.users
        elapsed -= stage.duration
    return None


@dataclass
class Result:
    """One request as the client saw it. Times are seconds on the caller's clock."""

    kind: str
    url: str
    start: float
    end: float | None = None
    first_token: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    status: int | None = None
    error: str | None = None
    token_times: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (vLLM's TPOT / inter-token latency)."""
        if self.first_token is None or self.end is None or self.output_tokens < 2:
            return None
        return (self.end - self.first_token) / (self.output_tokens - 1)

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("token_times")
        data.update(ttft=self.ttft, tpot=self.tpot, ok=self.ok)
        return data


def read_stream(result: Result, lines: Iterable[bytes | str], clock: Any) -> Result:
    """Consume an OpenAI streaming response (``data: {...}`` lines, ``data: [DONE]``) into ``result``.

    ``clock()`` gives the time of each line. Each chunk with content counts as one token (vLLM sends
    one token per chunk); the final usage chunk, when present, overrides the count. An error chunk, or
    a stream that ends without ``[DONE]``, marks the request failed."""
    done = False
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            result.error = f"bad stream chunk: {data[:80]}"
            break
        if "error" in chunk:
            error = chunk["error"]
            result.error = str(error.get("message", error) if isinstance(error, dict) else error)
            break
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                now = clock()
                if result.first_token is None:
                    result.first_token = now
                result.output_tokens += 1
        usage = chunk.get("usage")
        if usage:
            result.output_tokens = int(usage.get("completion_tokens", result.output_tokens))
            result.prompt_tokens = usage.get("prompt_tokens")
    result.end = clock()
    if not done and result.error is None:
        result.error = "stream ended before [DONE]"
    return result


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    """Counts, error kinds, TTFT/TPOT/end-to-end percentiles (seconds) and output tokens per second."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    errors: dict[str, int] = {}
    for r in failed:
        key = (r.error or "incomplete")[:120]
        errors[key] = errors.get(key, 0) + 1
    out: dict[str, Any] = {"requests": len(results), "ok": len(ok), "failed": len(failed), "errors": errors}
    series = {
        "ttft": [r.ttft for r in ok if r.ttft is not None],
        "tpot": [r.tpot for r in ok if r.tpot is not None],
        "e2e": [r.end - r.start for r in ok if r.end is not None],
    }
    for name, values in series.items():
        out[name] = {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
    if ok:
        span = max(r.end or r.start for r in ok) - min(r.start for r in ok)
        tokens = sum(r.output_tokens for r in ok)
        out["output_tokens"] = tokens
        out["output_tokens_per_s"] = tokens / span if span > 0 else None
    return out


def format_summary(summary: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    lines = [f"requests {summary['requests']}, ok {summary['ok']}, failed {summary['failed']}"]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "end-to-end")):
        p = summary[name]
        lines.append(f"{label:>10}: p50 {ms(p['p50'])}, p95 {ms(p['p95'])}, p99 {ms(p['p99'])}")
    if summary.get("output_tokens_per_s"):
        lines.append(
            f"output tokens/s: {summary['output_tokens_per_s']:.1f} ({summary['output_tokens']} tokens)"
        )
    for error, count in summary["errors"].items():
        lines.append(f"  {count} x {error}")
    return "\n".join(lines)


class Endpoints:
    """Where requests go: one base URL (a Service or gateway), or a file of ``host:port`` lines that is
    re-read when it changes (the e2e's ready pods), taken in turn (round-robin)."""

    def __init__(self, host: str | None = None, path: str | Path | None = None) -> None:
        if not host and not path:
            raise ValueError("give a host (--host) or an endpoints file (--endpoints-file)")
        self.host = host.rstrip("/") if host else None
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int] | None = None
        self._urls: list[str] = []
        self._turn = 0

    def _read(self, stat: tuple[int, int], text: str) -> None:
        self._stamp = stat
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        self._urls = [line if "://" in line else f"http://{line}" for line in lines]

    def urls(self) -> list[str]:
        if self.path is None:
            return [self.host] if self.host else []
        try:
            st = self.path.stat()
            stat = (st.st_mtime_ns, st.st_size)
            if stat != self._stamp:
                self._read(stat, self.path.read_text())
        except FileNotFoundError:
            self._urls = []
        return self._urls

    def next(self) -> str | None:
        urls = self.urls()
        if not urls:
            return None
        self._turn = (self._turn + 1) % len(urls)
        return urls[self._turn]


def schedule(requests: Sequence[Request]) -> Iterator[Request]:
    """The trace's requests in arrival order (users take them one at a time)."""
    return iter(sorted(requests, key=lambda r: r.at or 0.0))
