"""``make bench-routing``: the held-out scenarios where routing matters, through each router.

Long prompts, a flash crowd and the conversation trace with applications' system prompts, each
through a Kubernetes Service (``random``), a least-requests gateway (``least``) and our router
(``builtin``: the router's own picking code and hold queue, ``cluster.ROUTERS``). Per scenario, router
and seed, the same measures as ``make bench`` (``bench.run_job``): the static fleet sized for the peak
(the smallest that meets the SLO), and our scaler's and Knative's KPA's GPU-hours where their main
knob crosses the SLO, from their tuned settings (tuned once, through a Service, on the training split:
no policy was tuned for a router). Then, paired per seed (same card, cold starts and scrape offsets),
each router's GPU-hours at the SLO over the Service's.

Run as ``python -m qwen_tools.sim.routing --traces bench/traces --out bench/results``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from qwen_tools.sim import bench, tune
from qwen_tools.sim.cluster import ROUTERS
from qwen_tools.sim.run import GOAL, Scenario
from qwen_tools.sim.score import interval

# The scenarios, by their name in make bench, and what they are called here.
ROUTED = {
    "long-prompts-a10g (synthetic)": "long prompts",
    "flash-crowd-a10g (synthetic)": "flash crowd",
    "steady-a10g-prefix-affinity": "conversation, system prompts",
}
POLICIES = ("ours", "kpa")  # ours, and the peer that was cheapest at the SLO on steady traffic
KEPT = ("tuned", "at_tuned", "crossed_on_seeds", "gpu_hours_at_slo", "why_not")  # of bench.aggregate's


def scenarios(only: str | None = None) -> list[Scenario]:
    """Each routed scenario once per router."""
    base = {s.name: s for s in bench.SCENARIOS}
    return [
        replace(base[name], name=f"{label} via {router}", router=router)
        for name, label in ROUTED.items()
        for router in ROUTERS
        if not only or only in label
    ]


def _per_seed(runs: Sequence[Mapping[str, Any]], scenario: str, kind: str) -> dict[int, tuple[float, bool]]:
    """GPU-hours at the SLO per seed, and whether that is an upper bound: the static pool's (kind
    "references"), or a policy's crossing, or where its search met the SLO at every setting, the
    cheapest setting's (its cost at the SLO is at most that); NaN where there is none."""
    out = {}
    for r in runs:
        if r["scenario"] != scenario or r["kind"] != kind:
            continue
        if kind == "references":
            out[r["seed"]] = (bench.static_pool(r["statics"])[1], False)
            continue
        c = r["crossing"]
        if c["crossed"]:
            out[r["seed"]] = (float(c["gpu_hours"]), False)
        elif str(c.get("why", "")).startswith("met"):
            out[r["seed"]] = (float(c.get("cheapest_meeting", math.nan)), True)
        else:
            out[r["seed"]] = (math.nan, False)
    return out


def ratios(runs: Sequence[Mapping[str, Any]], label: str, router: str, kind: str) -> dict[str, Any] | None:
    """``router``'s GPU-hours at the SLO over the Service's, paired per seed, with a 95% interval, and
    whether it is an upper bound (the router's side met the SLO at every setting on some seed); None
    unless both sides have a figure on every seed, the Service's an exact one."""
    mine = _per_seed(runs, f"{label} via {router}", kind)
    service = _per_seed(runs, f"{label} via random", kind)
    seeds = sorted(mine)
    if not seeds or set(seeds) != set(service) or any(service[s][1] for s in seeds):
        return None
    pairs = [mine[s][0] / service[s][0] for s in seeds]
    if any(math.isnan(p) for p in pairs):
        return None
    return {**asdict(interval(pairs)), "upper_bound": any(mine[s][1] for s in seeds)}


def summarize(runs: Sequence[Mapping[str, Any]], chosen: Sequence[Scenario]) -> dict[str, Any]:
    """Per routed scenario and router: what ``bench.aggregate`` reads, and the ratios to the Service."""
    results = bench.aggregate(runs, chosen)
    out: dict[str, Any] = {}
    for label in dict.fromkeys(s.name.rpartition(" via ")[0] for s in chosen):
        rows = {}
        for router in ROUTERS:
            sc = results.get(f"{label} via {router}")
            if sc is None:
                continue
            rows[router] = {
                "static_pool": sc["static_pool"],
                "policies": {p: {k: st[k] for k in KEPT} for p, st in sc["policies"].items()},
                "vs_service": {
                    kind: ratios(runs, label, router, kind) for kind in ("references", *sc["policies"])
                },
            }
        out[label] = {"seeds": results[f"{label} via random"]["seeds"], "routers": rows}
    return out


def _ratio(r: Mapping[str, Any] | None) -> str:
    if r is None:
        return "n/a"
    return f"{'at most ' if r['upper_bound'] else ''}{r['mean']:.2f} ({r['low']:.2f}-{r['high']:.2f})"


def markdown(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    lines = [
        "# Routing: the same scenarios through a Service, a least-requests gateway and our router",
        "",
        f"Generated by `make bench-routing`: seeds {', '.join(map(str, meta['seeds']))}, "
        f"{meta['wall_seconds']:.0f} s wall on {meta['workers']} workers. Held-out scenarios of `make bench` "
        "(bench/results/results.md), each through `random` (a Kubernetes Service: a random ready pod; "
        "with none ready the connection is refused), `least` (a gateway: the pod with the fewest requests "
        "outstanding; holds requests while none is ready) and `builtin` (spec.routing.mode Builtin: the "
        "router's own picking code, qwen_router.picker, and its hold queue). **GPU-h at the SLO**: the "
        f"static fleet sized for the peak (the smallest meeting {100 * GOAL:.0f}% attainment), and each "
        "scaler where its main knob crosses the SLO, searched from its tuned setting (tuned through a "
        "Service, on the training split). **x Service**: that figure over the Service's, paired per seed "
        "(same card, cold starts, scrape offsets), mean and 95% interval; below 1 the router saves GPUs; "
        "*at most* where, on some seed, the scaler met the SLO through the router at every setting of its "
        "knob, so that its cheapest setting's GPU-hours bound its cost at the SLO from above. With "
        "`builtin`, our scaler also reads the router (requests in flight now, surges of arrivals: "
        "docs/autoscaling.md); Knative's KPA reads what it always reads.",
        "",
    ]
    kinds = meta["policies"]
    for label, sc in summary.items():
        lines += [
            f"## {label}",
            "",
            "| router | static fleet at the SLO | x Service | "
            + " | ".join(
                f"{p}: GPU-h at the SLO | x Service | {p} at tuned: SLO, GPU-h, TTFT p99 s" for p in kinds
            )
            + " |",
            "|---|---|---|" + "---|---|---|" * len(kinds),
        ]
        for router, row in sc["routers"].items():
            pool = row["static_pool"]
            cells = [
                router,
                f"{pool['replicas']} replicas, {bench._fmt(pool['gpu_hours'])} GPU-h",
                _ratio(row["vs_service"]["references"]),
            ]
            for p in kinds:
                st = row["policies"].get(p)
                if st is None:
                    cells += ["not run", "", ""]
                    continue
                seeds, at = len(sc["seeds"]), st["at_tuned"]
                crossed = st["crossed_on_seeds"] == seeds
                cells += [
                    bench._fmt(st["gpu_hours_at_slo"])
                    if crossed
                    else f"did not cross on {seeds - st['crossed_on_seeds']}/{seeds} seeds: "
                    + "; ".join(st["why_not"]),
                    _ratio(row["vs_service"].get(p)),
                    ", ".join(
                        (
                            bench._fmt(at["slo_attainment"], pct=True),
                            bench._fmt(at["gpu_hours"]),
                            bench._fmt(at["ttft_p99_s"], 1),
                        )
                    ),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write(
    runs: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], chosen: Sequence[Scenario], out: Path
) -> None:
    summary = summarize(runs, chosen)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": list(runs)}))
    (out / "routing.md").write_text(markdown(summary, meta))


def _scenarios_of(meta: Mapping[str, Any]) -> dict[str, Scenario]:
    return {name: Scenario(**fields) for name, fields in meta["scenarios"].items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_tools.sim.routing", description=__doc__)
    bench.run_arguments(parser, POLICIES)
    parser.add_argument("--only", help="run only scenarios whose label contains this")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="rebuild the summary and routing.md from an earlier routing.json's runs",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:  # after a change to the report, not to the simulation
        data = json.loads(args.from_json.read_text())
        write(data["runs"], data["meta"], list(_scenarios_of(data["meta"]).values()), args.out)
        return 0
    tuned = bench.load_tuned(args.tuned or args.out / "tuned.json")["tuned"]
    chosen = scenarios(args.only)
    if not chosen:
        raise SystemExit(f"no scenario matches {args.only!r}; choose from {', '.join(ROUTED.values())}")
    started = time.monotonic()
    seeds = bench.SCORING_SEEDS[: args.seeds]
    kinds = ("references", *args.policies.split(","))
    cache = Path(args.cache) if args.cache else None
    jobs = bench.jobs_for(chosen, seeds, kinds, tuned, args.traces, cache)
    runs = tune.in_pool(bench.run_job, jobs, args.workers, every=10)
    meta = {
        "seeds": list(seeds),
        "workers": args.workers,
        "wall_seconds": time.monotonic() - started,
        "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
        "policies": list(kinds[1:]),
        "scenarios": {s.name: {**asdict(s)} for s in chosen},
    }
    write(runs, meta, chosen, args.out)
    print(f"wrote {args.out}/routing.json and routing.md in {meta['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
