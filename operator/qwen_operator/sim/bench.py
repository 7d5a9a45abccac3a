"""``make bench``: every policy on every scenario over several seeds; JSON, Markdown and plots.

Run as ``python -m qwen_operator.sim.bench --traces bench/traces --out bench/results``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qwen_operator.sim import policies, report, trace
from qwen_operator.sim.run import GOAL, Scenario, run_all
from qwen_operator.sim.score import interval

# The published traces, pinned: a changed file changes every figure, so it must be noticed.
TRACES = {
    "conv": (
        "AzureLLMInferenceTrace_conv.csv",
        "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
    ),
    "code": (
        "AzureLLMInferenceTrace_code.csv",
        "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
    ),
}
DIURNAL_SECONDS = 7200.0

SCENARIOS = (
    Scenario("conv-a10g", "a10g", "conv"),
    Scenario("conv-l4", "l4", "conv"),
    Scenario("conv-a100-80gb", "a100-80gb", "conv"),
    Scenario("code-a10g", "a10g", "code"),
    Scenario("code-l4", "l4", "code"),
    Scenario("code-a100-80gb", "a100-80gb", "code"),
    Scenario("conv-a10g-max8", "a10g", "conv", max_replicas=8),
    Scenario("diurnal4x-a10g (synthetic)", "a10g", "conv-diurnal4", max_replicas=8),
    Scenario("diurnal10x-a10g (synthetic)", "a10g", "conv-diurnal10", max_replicas=8),
    Scenario("conv-overlay2-a100-80gb", "a100-80gb", "conv-overlay2"),
    Scenario("conv-a10g-scrape30", "a10g", "conv", scrape_interval=30),
    Scenario("conv-a10g-scrape60", "a10g", "conv", scrape_interval=60),
    Scenario("conv-a10g-coldstart45", "a10g", "conv", cold_start="fast"),
    Scenario("conv-a10g-coldstart360", "a10g", "conv", cold_start="slow"),
    Scenario("conv-a10g-leastrequests", "a10g", "conv", router="least"),
)
QUICK = (Scenario("conv-a10g-15min", "a10g", "conv-15min", max_replicas=5),)
PLOTTED = ("ours", "hpa", "kpa", "oracle")


def build_trace(name: str, folder: Path, seed: int) -> trace.Trace:
    base_name = name.split("-", 1)[0]
    file, digest = TRACES[base_name]
    path = folder / file
    if trace.sha256(path) != digest:
        raise SystemExit(f"{path}: sha256 differs from the pinned {digest}")
    base = trace.load(path, base_name)
    variant = name.split("-", 1)[1] if "-" in name else ""
    if variant == "diurnal4":
        return trace.diurnal(base, 4, DIURNAL_SECONDS, seed)
    if variant == "diurnal10":
        return trace.diurnal(base, 10, DIURNAL_SECONDS, seed)
    if variant == "overlay2":
        return base.overlaid(2, base.duration / 2)
    if variant == "15min":
        return base.window(1200, 900)
    return base


@dataclass(frozen=True)
class Job:
    scenario: Scenario
    seed: int
    traces: Path
    plots: Path | None
    length_scaled: bool | None = None


def run_job(job: Job) -> dict[str, Any]:
    started = time.process_time()
    requests = build_trace(job.scenario.trace, job.traces, job.seed)
    outcome = run_all(requests, job.scenario, job.seed, length_scaled=job.length_scaled)
    if job.plots is not None:
        slug = "".join(c if c.isalnum() or c == "-" else "_" for c in job.scenario.name)
        report.timeline_png(
            [outcome.results[p] for p in PLOTTED],
            job.plots / f"timeline-{slug}.png",
            f"{job.scenario.name}, seed {job.seed}" + (" (synthetic trace)" if requests.synthetic else ""),
        )
    return {
        "scenario": job.scenario.name,
        "seed": job.seed,
        "requests": len(requests),
        "summaries": {k: v.as_dict() for k, v in outcome.summaries.items()},
        "best_static": outcome.best_static,
        "lower_bound_gpu_hours": outcome.lower_bound_gpu_hours,
        "length_scaled": outcome.length_scaled,
        "cpu_seconds": time.process_time() - started,
    }


METRICS = (
    "slo_attainment",
    "gpu_hours",
    "ttft_p99_s",
    "tpot_p99_s",
    "scaling_actions",
    "reversals",
    "killed_requests",
    "timed_out_requests",
)


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario and policy: mean and 95% interval of every metric over the seeds, and the ratios."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == name]
        bound = interval([r["lower_bound_gpu_hours"] for r in mine]).mean
        policies_ = {}
        for policy in mine[0]["summaries"]:
            stats = {m: asdict(interval([r["summaries"][policy][m] for r in mine])) for m in METRICS}
            policies_[policy] = {"label": mine[0]["summaries"][policy]["policy"], **stats}
        oracle_gpu_h = policies_["oracle"]["gpu_hours"]["mean"]
        for stats in policies_.values():
            stats["gpu_hours_vs_oracle"] = stats["gpu_hours"]["mean"] / oracle_gpu_h
            stats["gpu_hours_vs_lower_bound"] = stats["gpu_hours"]["mean"] / bound
            stats["meets_slo"] = stats["slo_attainment"]["mean"] >= GOAL
        out[name] = {
            "seeds": len(mine),
            "requests": mine[0]["requests"],
            "length_scaled_ttft": mine[0]["length_scaled"],
            "lower_bound_gpu_hours": bound,
            "best_static": sorted({r["best_static"] for r in mine}),
            "policies": policies_,
        }
    return out


BASELINES = ("static-best", "hpa", "hpa-waiting", "keda", "kpa", "aibrix", "step", "step-kv")


def verdicts(results: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against the figures."""
    lines = []
    for name, sc in results.items():
        p = sc["policies"]
        ours = p["ours"]
        if name.startswith("conv-") and "ours" in p and not sc["length_scaled_ttft"]:
            met = [b for b in BASELINES if b in p and p[b]["meets_slo"]]
            cheaper = all(ours["gpu_hours"]["mean"] < p[b]["gpu_hours"]["mean"] for b in met)
            ok = ours["meets_slo"] and ours["gpu_hours_vs_oracle"] <= 1.15 and cheaper
            lines.append(
                f"{name}: {'PASS' if ok else 'MISS'}: ours SLO {ours['slo_attainment']['mean']:.2%}, "
                f"{ours['gpu_hours_vs_oracle']:.2f}x the achievable oracle's GPU-hours; baselines meeting "
                f"the SLO: {', '.join(met) or 'none'}" + ("" if cheaper else " (one is cheaper)")
            )
        if name.startswith("code-"):
            eff = {
                k: v["slo_attainment"]["mean"] / v["gpu_hours"]["mean"]
                for k, v in p.items()
                if k != "oracle" and k != "static-max"
            }
            best = max(eff, key=lambda k: eff[k])
            lines.append(
                f"{name}: {'PASS' if best == 'ours' else 'MISS'}: best SLO attainment per GPU-hour is "
                f"{best} ({eff[best]:.3f}/GPU-h; ours {eff['ours']:.3f})"
            )
    return lines


def _fmt(m: dict[str, float], digits: int = 2, pct: bool = False) -> str:
    """``mean ± half-width`` of a 95% interval."""
    if math.isnan(m["mean"]):
        return "n/a"
    half = (m["high"] - m["low"]) / 2
    if pct:
        return f"{100 * m['mean']:.2f}% ± {100 * half:.2f}"
    return f"{m['mean']:.{digits}f} ± {half:.{digits}f}"


HEADER = (
    "| policy | SLO | GPU-h | vs oracle | vs bound | TTFT p99 s | TPOT p99 s | actions | reversals | killed |"
)


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` ({meta['seeds']} seeds per scenario, {meta['wall_seconds']:.0f} s wall "
        f"on {meta['workers']} workers). Means with 95% intervals over the seeds. GPU-h ratios are to the "
        "achievable oracle (simulated clairvoyant schedule) and to the provable lower bound.",
        "",
        "## Targets",
        "",
        *[f"- {v}" for v in verdicts(results)],
        "",
    ]
    for name, sc in results.items():
        flag = " TTFT target length-scaled (static max cannot meet 2 s)." if sc["length_scaled_ttft"] else ""
        lines += [
            f"## {name}",
            "",
            f"{sc['requests']} requests; lower bound {sc['lower_bound_gpu_hours']:.2f} GPU-h; best static N "
            f"{sc['best_static']}.{flag}",
            "",
            HEADER,
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for st in sc["policies"].values():
            label = st["label"] + (" ✓" if st["meets_slo"] else "")
            lines.append(
                f"| {label} | {_fmt(st['slo_attainment'], pct=True)} | {_fmt(st['gpu_hours'])} | "
                f"{st['gpu_hours_vs_oracle']:.2f} | {st['gpu_hours_vs_lower_bound']:.2f} | "
                f"{_fmt(st['ttft_p99_s'], 1)} | {_fmt(st['tpot_p99_s'], 3)} | "
                f"{_fmt(st['scaling_actions'], 1)} | {_fmt(st['reversals'], 1)} | "
                f"{_fmt(st['killed_requests'], 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


RESULTS_START, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"


def with_results(doc: str, table: str) -> str:
    """``doc`` with the block between the results markers replaced by ``table`` (headings demoted)."""
    start, end = doc.index(RESULTS_START) + len(RESULTS_START), doc.index(RESULTS_END)
    body = "\n".join("#" + line if line.startswith("#") else line for line in table.splitlines())
    return doc[:start] + "\n" + body + "\n" + doc[end:]


def summary_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4 * rows), squeeze=False)
    for ax, name in zip([a for r in axes for a in r], names, strict=False):
        for key, st in results[name]["policies"].items():
            x, y = st["gpu_hours"]["mean"], 100 * st["slo_attainment"]["mean"]
            ax.scatter([x], [y], color="tab:red" if key == "ours" else "tab:blue", s=25)
            ax.annotate(key, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(100 * GOAL, color="black", lw=0.5, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel("SLO attainment %")
    for ax in [a for r in axes for a in r][len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_operator.sim.bench", description=__doc__)
    parser.add_argument("--traces", default="bench/traces", type=Path)
    parser.add_argument("--out", default="bench/results", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="one 15-minute scenario (for tests)")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="a Markdown file whose results block to refresh (docs/benchmark.md)",
    )
    args = parser.parse_args(argv)
    scenarios = QUICK if args.quick else tuple(s for s in SCENARIOS if not args.only or args.only in s.name)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    jobs = [
        Job(s, seed, args.traces, args.out if seed == 0 else None)
        for s in scenarios
        for seed in range(args.seeds)
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = []
        for i, done in enumerate(pool.map(run_job, jobs), start=1):
            runs.append(done)
            print(
                f"[{i}/{len(jobs)}] {done['scenario']} seed {done['seed']}: {done['cpu_seconds']:.1f} s",
                file=sys.stderr,
            )
    results = aggregate(runs)
    meta = {
        "seeds": args.seeds,
        "workers": args.workers,
        "wall_seconds": time.monotonic() - started,
        "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
        "traces": {k: {"file": f, "sha256": h} for k, (f, h) in TRACES.items()},
        "policies": ["static-best", "static-max", *policies.POLICIES, "oracle"],
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "scenarios": results, "runs": runs}, indent=1)
    )
    (args.out / "results.md").write_text(markdown(results, meta))
    summary_plot(results, args.out / "slo-vs-gpu-hours.png")
    if args.docs is not None and args.docs.exists():
        args.docs.write_text(with_results(args.docs.read_text(), markdown(results, meta)))
    print("\n".join(verdicts(results)))
    print(f"wrote {args.out}/results.json, results.md and plots in {meta['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
