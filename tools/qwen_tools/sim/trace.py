"""Request traces: the Azure LLM-inference CSV format, and synthetic variants built from real traces."""

from __future__ import annotations

import csv
import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class Trace:
    """Arrival times (seconds from the first request) with prompt and output lengths, sorted."""

    name: str
    arrivals: tuple[float, ...]
    prompts: tuple[int, ...]
    outputs: tuple[int, ...]
    synthetic: bool = False
    # Per request, a shared prefix: (id, tokens), id 0 for none; empty when no request has one. Only
    # ``with_shared_prompts`` sets it, and the other transformations drop it (apply it last).
    prefixes: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def duration(self) -> float:
        return self.arrivals[-1] if self.arrivals else 0.0

    def rows(self) -> Iterable[tuple[float, int, int]]:
        return zip(self.arrivals, self.prompts, self.outputs, strict=True)

    def prefix(self, i: int) -> tuple[int, int]:
        """Request ``i``'s shared prefix: (id, tokens), (0, 0) for none."""
        return self.prefixes[i] if self.prefixes else (0, 0)

    def with_shared_prompts(
        self,
        seed: int,
        apps: int = 200,
        share: float = 0.8,
        tokens: tuple[int, int] = (200, 3000),
    ) -> Trace:
        """The same requests, a ``share`` of them sent by one of ``apps`` applications (Zipf-popular:
        the k-th sends 1/k as much as the first) whose prompts open with that application's system
        prompt (log-uniform in ``tokens`` long; a shorter prompt is all system prompt but its last
        token). The Azure traces record lengths only: which requests share a prefix is an assumption."""
        rng = random.Random(f"{seed}:shared-prompts")
        lo, hi = tokens
        lengths = [round(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(apps)]
        weights = [1 / (k + 1) for k in range(apps)]
        prefixes = []
        for prompt in self.prompts:
            if rng.random() >= share:
                prefixes.append((0, 0))
                continue
            app = rng.choices(range(apps), weights)[0]
            prefixes.append((app + 1, min(lengths[app], max(0, prompt - 1))))
        return Trace(f"{self.name}-shared", self.arrivals, self.prompts, self.outputs, True, tuple(prefixes))

    def window(self, start: float, length: float) -> Trace:
        """The requests that arrive in ``[start, start + length)``, re-based to 0."""
        rows = [(t - start, p, o) for t, p, o in self.rows() if start <= t < start + length]
        return _from_rows(f"{self.name}[{start:g}s+{length:g}s]", rows, self.synthetic)

    def compressed(self, speed: float) -> Trace:
        """The same requests ``speed`` times faster (for demos only: benchmarks never compress time)."""
        rows = [(t / speed, p, o) for t, p, o in self.rows()]
        return _from_rows(f"{self.name}x{speed:g}", rows, self.synthetic)

    def looped(self, times: int) -> Trace:
        """The same requests played ``times`` times in a row (a longer run of the same real traffic)."""
        period = self.duration + 1.0
        rows = [(t + k * period, p, o) for k in range(times) for t, p, o in self.rows()]
        return _from_rows(f"{self.name}x{times}", rows, self.synthetic)

    def thinned(self, keep: Callable[[float], float], seed: int) -> Trace:
        """The trace's own requests, each kept with probability ``keep(t)``: a chosen level of load over
        time, with the trace's own bursts and request sizes."""
        rng = random.Random(f"{seed}:thinned")
        rows = [(t, p, o) for t, p, o in self.rows() if rng.random() < keep(t)]
        return _from_rows(f"{self.name}-thinned", rows, True)

    def overlaid(self, copies: int, shift: float) -> Trace:
        """Heavier load: ``copies`` copies, each shifted by ``shift`` more seconds (wrapping around)."""
        span = self.duration + 1e-9
        rows = [((t + c * shift) % span, p, o) for c in range(copies) for t, p, o in self.rows()]
        return _from_rows(f"{self.name}-overlay{copies}", rows, True)


def _from_rows(name: str, rows: list[tuple[float, int, int]], synthetic: bool) -> Trace:
    rows.sort()
    return Trace(
        name,
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
        tuple(r[2] for r in rows),
        synthetic,
    )


def _seconds(stamp: str) -> float:
    # 2023-11-16 18:15:46.6805900: seven fractional digits, more than datetime parses.
    head, _, frac = stamp.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load(path: str | Path, name: str | None = None) -> Trace:
    """A CSV with the Azure columns ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(
                    (
                        _seconds(row["TIMESTAMP"]),
                        int(row["ContextTokens"]),
                        max(1, int(row["GeneratedTokens"])),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: no requests")
    start = min(r[0] for r in rows)
    return _from_rows(name or path.stem, [(t - start, p, o) for t, p, o in rows], False)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _poisson(
    name: str,
    rate: Callable[[float], float],
    peak: float,
    duration: float,
    size: Callable[[random.Random], tuple[int, int]],
    seed: int,
) -> Trace:
    """A synthetic trace: a Poisson process of ``rate(t)`` requests/s (at most ``peak``), by thinning,
    with request sizes drawn by ``size``."""
    rng = random.Random(seed)
    rows: list[tuple[float, int, int]] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            break
        if rng.random() < rate(t) / peak:
            prompt, output = size(rng)
            rows.append((t, prompt, output))
    return _from_rows(name, rows, True)


def _resampled(base: Trace) -> Callable[[random.Random], tuple[int, int]]:
    sizes = list(zip(base.prompts, base.outputs, strict=True))
    return lambda rng: rng.choice(sizes)


def mean_rate(base: Trace) -> float:
    return len(base) / base.duration


def diurnal(base: Trace, peak_to_trough: float, duration: float, seed: int) -> Trace:
    """Synthetic: a day-shaped arrival rate (one cosine period over ``duration``) whose mean is the base
    trace's and whose peak is ``peak_to_trough`` times its trough; request sizes resampled from ``base``."""
    mean = mean_rate(base)
    amplitude = (peak_to_trough - 1) / (peak_to_trough + 1)

    def rate(t: float) -> float:
        return mean * (1 - amplitude * math.cos(2 * math.pi * t / duration))

    name = f"{base.name}-diurnal{peak_to_trough:g}x"
    return _poisson(name, rate, mean * (1 + amplitude), duration, _resampled(base), seed)


def ramp(base: Trace, start: float, end: float, duration: float, seed: int) -> Trace:
    """Synthetic: the arrival rate moves linearly from ``start`` to ``end`` times the base trace's mean
    over ``duration``; sizes resampled from ``base``."""
    mean = mean_rate(base)

    def rate(t: float) -> float:
        return mean * (start + (end - start) * t / duration)

    return _poisson(
        f"{base.name}-ramp{start:g}-{end:g}x", rate, mean * max(start, end), duration, _resampled(base), seed
    )


def flash_crowd(
    base: Trace,
    duration: float,
    seed: int,
    base_level: float = 0.3,
    spike: float = 4.0,
    spike_seconds: tuple[float, float] = (45.0, 120.0),
    gap_seconds: tuple[float, float] = (300.0, 900.0),
) -> Trace:
    """Synthetic: a low rate (``base_level`` x the base trace's mean) with short spikes of ``spike`` x
    the mean, each lasting a draw from ``spike_seconds`` (shorter than a cold start), one every draw
    from ``gap_seconds`` (5-15 minutes); sizes resampled from ``base``."""
    mean = mean_rate(base)
    rng = random.Random(f"{seed}:spikes")
    spikes: list[tuple[float, float]] = []
    t = rng.uniform(*gap_seconds) / 2
    while t < duration:
        length = rng.uniform(*spike_seconds)
        spikes.append((t, t + length))
        t += length + rng.uniform(*gap_seconds)

    def rate(now: float) -> float:
        return mean * (spike if any(a <= now < b for a, b in spikes) else base_level)

    return _poisson(
        f"{base.name}-flash{spike:g}x", rate, mean * max(spike, base_level), duration, _resampled(base), seed
    )


def long_prompts(
    base: Trace, duration: float, seed: int, prompts: tuple[int, int] = (4000, 30000), load: float = 1.0
) -> Trace:
    """Synthetic RAG/agent-like traffic: prompts log-uniform in ``prompts`` tokens, outputs resampled
    from ``base``; the rate keeps ``load`` x the base trace's prompt tokens per second (so far fewer,
    far longer requests)."""
    mean_prompt = sum(base.prompts) / len(base)
    lo, hi = prompts
    mean_long = (hi - lo) / math.log(hi / lo)  # the mean of a log-uniform draw
    rate = load * mean_rate(base) * mean_prompt / mean_long
    outputs = list(base.outputs)

    def size(rng: random.Random) -> tuple[int, int]:
        return round(math.exp(rng.uniform(math.log(lo), math.log(hi)))), rng.choice(outputs)

    return _poisson(f"{base.name}-longprompt", lambda _: rate, rate, duration, size, seed)
