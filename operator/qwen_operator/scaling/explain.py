"""The SLO plan's message: what it saw, what it learned and what it acted on, as a person reads it.

Pure text from the plan's stages (:mod:`.slo`); it decides nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from qwen_operator import api

if TYPE_CHECKING:
    from qwen_operator.perf import sizing as sizer
    from qwen_operator.scaling.slo import Outlook, Seen, Verdict


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _tokens(x: float) -> str:
    """A rate of tokens, as a person reads it: whole tokens from 10 up."""
    return f"{x:.0f}" if x >= 10 else _one(x)


def _one(x: float) -> str:
    """One decimal at most: 1.15 reads 1.2, 2.0 reads 2."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _pct(x: float) -> str:
    return "none" if not math.isfinite(100 * x) else f"{round(100 * x):+d}%"


def _percent(x: float) -> str:
    return f"{round(100 * x)}%"


def describe(
    seen: Seen,
    slo: api.LatencySLO,
    work: float,
    scale: float,
    verdict: Verdict,
    outlook: Outlook,
    acted: sizer.Sized | None,
    load_factor: float,
    brink_margin: float,
) -> str:
    """The plan's message: the load and the capacity it is measured against, the SLO's attainment in
    the window, then only what applies (the router's surge, pods waiting for a node, the KV caches, why
    misses were not pressure, the forecast, a burst held, the model's prediction acted on)."""
    traffic = seen.traffic
    assert traffic is not None
    bound, evidence = slo.time_to_first_token_seconds, verdict.evidence
    within = "n/a" if evidence is None else f"{_one(100 * evidence.within)}%"
    tpot_bound = slo.time_per_output_token_seconds
    if tpot_bound is not None:
        decode = "n/a" if evidence is None or evidence.decode is None else f"{_one(100 * evidence.decode)}%"
        within += f", TPOT <= {_fmt(tpot_bound)} s for {decode}"
    headroom = seen.ready * scale / work - 1 if work > 0 else math.inf
    message = (
        f"load {_tokens(traffic.prompt_tokens_per_second)} prompt + "
        f"{_tokens(traffic.generation_tokens_per_second)} generated tokens/s = {_one(work / scale)} "
        f"replicas' worth, a replica carrying {_percent(scale)} of its GPU's nominal rate at this SLO "
        f"(headroom {_pct(headroom)}); TTFT <= {_fmt(bound)} s for {within} (SLO {_fmt(slo.percentile)}%"
        f"{', under pressure' if verdict.failed else ''})"
    )
    surge = seen.surge
    if surge is not None:
        message += (
            f"; the router counts {_one(surge.rate)} requests/s over the last {surge.seconds:.0f} s, "
            f"{_one(surge.factor)}x the window's rate: planning for it"
        )
    measured, cold = outlook.measured, outlook.cold
    if seen.waiting_for_node > 0 and measured is not None and cold > measured:
        message += (
            f"; {seen.waiting_for_node} pod(s) waiting for a node: planning {cold:.0f} s ahead (a start "
            f"{measured:.0f} s on average)"
        )
    if verdict.kv_full or verdict.brink:
        peak, target = _percent(verdict.kv_peak), _percent(seen.kv_target)
        message += f"; KV cache {peak} full on the busiest pod (target {target})"
    if verdict.brink == "forget":
        message += f", {_percent(verdict.kv_mean)} on average: the loads carried before are forgotten"
    elif verdict.brink == "margin":
        margin = _percent(1 - brink_margin)
        message += f", {_percent(verdict.kv_mean)} on average: the aim stays {margin} under this load"
    message += _misses_not_pressure(slo, verdict)
    if outlook.forecast > work * 1.05:
        message += f"; forecast {_one(outlook.forecast / scale)} replicas' worth in {cold:.0f} s"
    if outlook.hold > outlook.forecast:
        message += f"; bursts shorter than a cold start: holding {_one(outlook.hold / scale)} replicas' worth"
    if acted is not None:
        n = acted.replicas
        message += (
            f"; model: at {n} replica{'s' if n != 1 else ''} {_one(100 * acted.late)}% of first tokens"
            f" predicted later than {_fmt(bound)} s (load factor {load_factor:.1f})"
        )
        if acted.cache_limited is not None:
            fewer, usage = acted.cache_limited
            full = "full" if usage >= 1 else _percent(usage)
            target = _percent(seen.kv_target)
            message += f"; at {fewer} the fullest KV cache would be {full}, past the {target} target"
    return message


def _misses_not_pressure(slo: api.LatencySLO, verdict: Verdict) -> str:
    """Why misses beyond the allowance did not count as pressure ("" when they did, or were none)."""
    evidence, allowance = verdict.evidence, slo.allowance
    slow = 0.0 if evidence is None else evidence.slow
    if evidence is None or verdict.failed or max(1 - evidence.within, evidence.queued, slow) <= allowance:
        return ""
    if evidence.misses(verdict.loaded)[0] <= allowance:
        return (
            "; misses at light load are the prompts' own prefill time"
            f"{' or the decoding speed' if slow > allowance else ''}: more replicas would not help"
        )
    if verdict.pooled is not None:
        pooled = _fmt(100 * verdict.pooled)
        return f"; {pooled}% missed over the windows at about this load: chance, not pressure"
    return "; not judged: the ready count just changed, or a burst just ended"
