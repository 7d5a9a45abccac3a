"""Which engine a request goes to. Pure: no I/O, no clock.

- A request that names a session (a header the service chooses) goes to that session's engine, by
  rendezvous hashing over the ready engines, so that a conversation's turns reuse its prefix cache.
- Otherwise a request whose prompt has a leading text (a system prompt, a conversation's first turns)
  goes to that text's engine the same way.
- Either only while that engine holds at most ``bound`` times the mean load (one more counted):
  consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018). Past it, the next
  engine in the text's order that is within it.
- Without either, the least loaded engine, weighted by how full its KV cache is (when known):
  ``load x (1 + kv)``.

An engine's load is the larger of the requests this router has outstanding on it and the requests
the engine itself last reported running and waiting: other router replicas send to it too.

Rendezvous hashing moves only the texts of an engine that comes or goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

AFFINITY_BOUND = 1.25
PREFIX_CHARS = 1024  # of a prompt's leading text, what names its prefix


@dataclass
class Engine:
    """One ready engine: where it is, and what the router knows of its load."""

    name: str
    url: str
    outstanding: int = 0
    kv: float | None = None  # its KV cache usage (0-1), when the router reads it
    reported: float = 0.0  # requests running and waiting, as the engine last reported them

    @property
    def load(self) -> float:
        return max(float(self.outstanding), self.reported)


@dataclass(frozen=True)
class Pick:
    engine: Engine
    reason: str  # "session", "prefix", "overflow" (the favourite was over its bound), "least"


def _weight(engine: Engine, key: str) -> bytes:
    return hashlib.blake2b(f"{engine.name}\0{key}".encode(), digest_size=8).digest()


@dataclass
class Picker:
    engines: dict[str, Engine] = field(default_factory=dict)
    bound: float = AFFINITY_BOUND

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
        key, reason = (session, "session") if session else (prefix, "prefix") if prefix else (None, "least")
        if key is None:
            return Pick(min(ready, key=lambda e: (e.load * (1 + (e.kv or 0.0)), e.name)), "least")
        limit = self.bound * (sum(e.load for e in ready) + 1) / len(ready)
        order = sorted(ready, key=lambda e: _weight(e, key))
        for i, engine in enumerate(order):
            if engine.load + 1 <= max(limit, 1.0):
                return Pick(engine, reason if i == 0 else "overflow")
        return Pick(min(order, key=lambda e: e.load), "overflow")


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
