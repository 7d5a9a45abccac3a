"""Which engine a request goes to. Pure: no I/O, no clock.

- A request that names a session (a header the service chooses) goes to that session's engine, by
  rendezvous hashing over the ready engines, so that a conversation's turns reuse its prefix cache
  (and every router replica agrees on the engine without talking to the others).
- A request whose prompt opens with a leading text this router has sent before (a system prompt, a
  conversation's first turns) goes to the least loaded of the engines it sent that text to lately
  (up to ``HOMES`` of them): their prefix caches hold its KV blocks. The router remembers the last
  ``kept`` texts (by digest, least recently used out).
- Either only while that engine holds at most ``bound`` times the mean load (one more counted):
  bounded loads, as in consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
  2018). Past it, a session goes to the next engine in its order that is within it; a text to the
  least loaded engine, which becomes one of its homes: a popular text spreads over as many engines
  as its load needs, a rare one stays on one.
- Anything else (a text not seen before: nothing of it is cached anywhere) goes to the engine with
  the least prompt work ahead of a new request's first token: the prompt tokens (estimated from the
  request's size) of the requests sent to it that have no first byte back yet, then the fewest
  requests, then the emptiest KV cache. (Chosen on the benchmark's training split: against the fewest
  requests alone, and against requests weighted by KV use, which sends long prompts to an engine
  whose KV looks empty because it is still prefilling one: docs/router.md.)

An engine's load is the larger of the requests this router has outstanding on it and the requests
the engine itself last reported running and waiting: other router replicas send to it too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

AFFINITY_BOUND = 1.25
PREFIX_CHARS = 1024  # of a prompt's leading text, what names its prefix
CHARS_PER_TOKEN = 4  # to estimate a prompt's tokens from its request's size, without a tokenizer
PREFIXES_KEPT = 10_000  # leading texts remembered (a 16-byte digest and up to HOMES engine names each)
HOMES = 4  # engines remembered per text, the most recent first


@dataclass
class Engine:
    """One ready engine: where it is, and what the router knows of its load."""

    name: str
    url: str
    outstanding: int = 0
    kv: float | None = None  # its KV cache usage (0-1), when the router reads it
    reported: float = 0.0  # requests running and waiting, as the engine last reported them
    pending: int = 0  # prompt tokens (estimated) of requests sent to it that have no first byte back yet

    @property
    def load(self) -> float:
        return max(float(self.outstanding), self.reported)


@dataclass(frozen=True)
class Pick:
    engine: Engine
    reason: str  # "session", "prefix", "overflow" (the favourite was over its bound), "least"


@dataclass
class Pending:
    """A request's prompt tokens counted on its engine until :meth:`done` (its first byte, or its end)."""

    engine: Engine
    tokens: int

    def __post_init__(self) -> None:
        self.engine.pending += self.tokens

    def done(self) -> None:
        self.engine.pending -= self.tokens
        self.tokens = 0


def _cost(engine: Engine) -> tuple[int, float, float, str]:
    return (engine.pending, engine.load, engine.kv or 0.0, engine.name)


def _weight(engine: Engine, key: str) -> bytes:
    return hashlib.blake2b(f"{engine.name}\0{key}".encode(), digest_size=8).digest()


@dataclass
class Picker:
    engines: dict[str, Engine] = field(default_factory=dict)
    bound: float = AFFINITY_BOUND
    kept: int = PREFIXES_KEPT
    _sent: OrderedDict[bytes, list[str]] = field(default_factory=OrderedDict)  # text digest -> homes, LRU

    def update(self, ready: Mapping[str, str]) -> None:
        """The ready engines now (name -> base URL); what an engine had outstanding stays counted."""
        for name in [n for n in self.engines if n not in ready]:
            del self.engines[name]
        for name, url in ready.items():
            engine = self.engines.get(name)
            if engine is None:
                self.engines[name] = Engine(name, url)
            else:  # the same object: the requests in flight on it count down on it
                engine.url = url

    def pick(
        self, session: str | None = None, prefix: str | None = None, exclude: Iterable[str] = ()
    ) -> Pick | None:
        """The engine for a request (None when none is ready)."""
        skip = set(exclude)
        ready = [e for e in self.engines.values() if e.name not in skip]
        if not ready:
            return None
        limit = max(self.bound * (sum(e.load for e in ready) + 1) / len(ready), 1.0)
        if session:
            order = sorted(ready, key=lambda e: _weight(e, session))
            for i, engine in enumerate(order):
                if engine.load + 1 <= limit:
                    return Pick(engine, "session" if i == 0 else "overflow")
            return Pick(min(order, key=lambda e: e.load), "overflow")
        least = min(ready, key=_cost)
        if not prefix:
            return Pick(least, "least")
        digest = hashlib.blake2b(prefix.encode(), digest_size=16).digest()
        homes = self._sent.get(digest, [])
        known = [e for name in homes if name not in skip and (e := self.engines.get(name)) is not None]
        within = [e for e in known if e.load + 1 <= limit]
        if within:
            pick = Pick(min(within, key=lambda e: (e.load, e.name)), "prefix")
        else:
            pick = Pick(least, "overflow" if known else "least")
        name = pick.engine.name
        self._sent[digest] = [name, *(h for h in homes if h != name)][:HOMES]
        self._sent.move_to_end(digest)
        while len(self._sent) > self.kept:
            self._sent.popitem(last=False)
        return pick


def prefix_of(body: Mapping[str, object]) -> str | None:
    """The leading text that names a request's prefix: a chat's messages in order (roles and text), or
    a completion's prompt, cut at ``PREFIX_CHARS``; None when there is none."""
    messages = body.get("messages")
    parts: list[str] = []
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # parts: the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{message.get('role', '')}:{content if isinstance(content, str) else ''}\n")
            if sum(map(len, parts)) >= PREFIX_CHARS:
                break
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            parts.append(prompt)
    text = "".join(parts)[:PREFIX_CHARS]
    return text or None
