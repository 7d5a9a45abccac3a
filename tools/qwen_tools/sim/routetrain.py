"""``make bench-routing-train``: the router's rules, judged on the benchmark's training split only.

Two questions were settled here before any held-out run (``make bench-routing``) was looked at:

1. **Picking** (``qwen_router.picker``): static fleets of 5-7 replicas on the conversation trace's first
   half, half an hour of it as long prompts (``trace.long_prompts``) and all of it with applications'
   system prompts (``with_shared_prompts``), through each router of ``cluster.ROUTERS``.
2. **The surge** (``qwen_operator.surge``): SLO mode at its tuned setting, through the router, with
   and without it (``SURGE_Z`` set out of reach), on the training traces (the first half, the ramp
   built from it) and on sustained 4x steps built from the same half.

Seeds 0-2 (the tuning's), the A10G (for picking, each seed's card drawn from its band; for the surge, the
nominal card, as the tuning runs). Prints one line per run and
writes ``routing-train.json``.

Run as ``python -m qwen_tools.sim.routetrain --traces bench/traces --out bench/results``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwen_operator import surge
from qwen_tools.sim import bench, policies, trace, tune
from qwen_tools.sim.cluster import ROUTERS, Cluster, Settings
from qwen_tools.sim.gpus import model
from qwen_tools.sim.run import Scenario, start_replicas
from qwen_tools.sim.score import fixed_target, length_scaled_target, summarize

SEEDS = (0, 1, 2)
STATIC_SIZES = (5, 6, 7)
LONG_SECONDS = 1800.0
OURS = {"ttft": 3.0, "stabilization": 300}  # tuned.json's a10g setting for ours, kept here for the record


def _training(traces: Path, seed: int) -> dict[str, trace.Trace]:
    """The tuning's training traces (the conversation trace's first half, the ramp built from it)."""
    return tune.training_traces(bench.load_pinned(traces, "conv"), seed)


def picking(job: tuple[Path, int, str, int, str]) -> dict[str, Any]:
    traces, seed, kind, size, router = job
    first = _training(traces, seed)["conv-first-half"]
    requests = (
        trace.long_prompts(first, LONG_SECONDS, seed) if kind == "long" else first.with_shared_prompts(seed)
    )
    nominal = model("a10g", "nominal")
    target = length_scaled_target(nominal) if kind == "long" else fixed_target()
    card = model("a10g", "drawn", seed)
    result = Cluster(requests, policies.Static(size), Settings(card, 1, size, size, router, seed=seed)).run()
    s = summarize(result, target)
    scores = {"slo_attainment": s.slo_attainment, "ttft_p99_s": s.ttft_p99_s}
    return {"test": "picking", "trace": kind, "seed": seed, "replicas": size, "router": router, **scores}


def surging(job: tuple[Path, int, str, bool]) -> dict[str, Any]:
    traces, seed, kind, on = job
    surge.SURGE_Z = 3.0 if on else float("inf")  # this worker's runs only
    training = _training(traces, seed)
    if kind == "steps":
        requests = trace.flash_crowd(
            training["conv-first-half"],
            3600,
            seed,
            base_level=0.5,
            spike=2.0,
            spike_seconds=(600, 900),
            gap_seconds=(600, 900),
        )
    else:
        requests = training[kind]
    scenario = Scenario("train-a10g", "a10g", max_replicas=tune.MAX_REPLICAS, router="builtin")  # as tune.py
    policy = tune.configured("ours", 1, tune.MAX_REPLICAS, OURS, scenario.model.product)
    result = Cluster(requests, policy, scenario.settings(seed, start_replicas(requests, scenario))).run()
    s = summarize(result, fixed_target())
    scores = {"slo_attainment": s.slo_attainment, "gpu_hours": s.gpu_hours, "ttft_p99_s": s.ttft_p99_s}
    return {"test": "surge", "trace": kind, "seed": seed, "surge": on, **scores}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_tools.sim.routetrain", description=__doc__)
    parser.add_argument("--traces", default="bench/traces", type=Path)
    parser.add_argument("--out", default="bench/results", type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    picks = [
        (args.traces, seed, kind, size, router)
        for seed in SEEDS
        for kind in ("long", "shared")
        for size in STATIC_SIZES
        for router in ROUTERS
    ]
    surges = [
        (args.traces, seed, kind, on)
        for seed in SEEDS
        for kind in ("conv-first-half", "ramp-0.5-2x", "steps")
        for on in (False, True)
    ]
    runs = tune.in_pool(picking, picks, args.workers, every=20)
    runs += tune.in_pool(surging, surges, args.workers, every=20)
    for r in runs:
        print(json.dumps(r))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routing-train.json").write_text(json.dumps({"seeds": SEEDS, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
