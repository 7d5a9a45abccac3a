"""The tooling's ``qwen-operator`` verbs (``manifests``, ``simulate``), added to the operator's CLI through
the ``qwen_operator.commands`` entry point group; the operator image, which has only the runtime, does
not carry them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from qwen_operator import api, validation
from qwen_operator.cli import documents
from qwen_tools import install
from qwen_tools.sim import policies, report, run, score, trace
from qwen_tools.sim.cluster import COLD_STARTS, ROUTERS
from qwen_tools.sim.gpus import GPUS


def cmd_manifests(args: argparse.Namespace) -> int:
    """Write deploy/install.yaml, rendered from the Helm chart with its defaults."""
    text = install.install_yaml(Path(args.chart))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0


def _autoscaling_spec(path: str) -> api.AutoscalingSpec:
    docs = list(documents([path]))
    if not docs:
        raise SystemExit(f"{path}: no QwenService found")
    _, doc = docs[0]
    doc.setdefault("metadata", {}).setdefault("namespace", "default")
    try:
        return validation.parse(doc).spec.scaling()
    except validation.InvalidSpec as exc:
        raise SystemExit(f"{path}: invalid QwenService:\n  - " + "\n  - ".join(exc.messages)) from None


def cmd_simulate(args: argparse.Namespace) -> int:
    """Replay a trace against a simulated vLLM fleet under one scaling policy."""
    try:
        requests = trace.load(args.trace)
        if args.shared_prompts:
            requests = requests.with_shared_prompts(args.seed, apps=args.shared_prompts)
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    spec = _autoscaling_spec(args.spec) if args.spec else None
    lo = spec.min_replicas if spec else args.min
    hi = spec.max_replicas if spec else args.max
    scenario = run.Scenario(
        Path(args.trace).stem,
        args.gpu,
        min_replicas=lo,
        max_replicas=hi,
        cold_start=args.cold_start,
        scrape_interval=args.scrape_interval,
        router=args.router,
        clients=args.clients,
        think=args.think,
    )
    try:
        if args.policy != "oracle":
            policies.make(args.policy, lo, hi, spec, GPUS[args.gpu].product)  # fail fast on a bad name
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    with tqdm(total=100, desc=args.policy, unit="%", file=sys.stderr, leave=False) as bar:

        def progress(done: float) -> None:
            bar.update(round(done * 100) - bar.n)

        extra: dict[str, float] = {}
        if args.policy == "oracle":
            outcome = run.run_all(requests, scenario, args.seed, names=(), spec=spec)
            result, summary = outcome.results["oracle"], outcome.summaries["oracle"]
            extra["work_bound_gpu_hours"] = outcome.work_bound_gpu_hours
        else:
            result = run.run_policy(requests, scenario, args.policy, args.seed, spec, progress)
            summary = score.summarize(result)
    if args.png:
        report.timeline_png(
            [result], args.png, f"{requests.name} on {args.gpu}, seed {args.seed}", max_replicas=hi
        )
    if args.json:
        print(json.dumps({**summary.as_dict(), **extra}, sort_keys=True))
    else:
        print(report.table([summary]))
        for key, value in extra.items():
            print(f"{key}: {value:.2f}")
        if args.png:
            print(f"timeline: {args.png}")
    return 0


def add_manifests(sub: Any) -> None:
    m = sub.add_parser(
        "manifests", help="render the Helm chart with defaults into one kubectl-applyable file"
    )
    m.add_argument("--chart", default="charts/qwen-operator", help="the chart folder")
    m.add_argument("--output", default="deploy/install.yaml", help="file to write; - for stdout")
    m.set_defaults(func=cmd_manifests)


def add_simulate(sub: Any) -> None:
    sm = sub.add_parser(
        "simulate",
        help="replay a request trace against a simulated vLLM fleet under a scaling policy",
        description=(
            "Replay a request trace (the Azure LLM-inference CSV format) against a simulated fleet of vLLM "
            "replicas (Qwen2.5-7B) under one scaling policy, and print its SLO attainment (TTFT <= 2 s), "
            "GPU-hours and scaling actions. The fleet starts warm, as a running service would: with twice "
            "the replicas the first five minutes need (within --min/--max), whose engines have already "
            "served the trace's first two minutes; only the controller is new. Static fleets start at "
            "their size. The model and its sources: docs/benchmark.md."
        ),
        epilog=(
            "example: qwen-operator simulate --trace bench/traces/AzureLLMInferenceTrace_conv.csv "
            "--gpu a10g --policy hpa --seed 1 --png build/hpa.png"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sm.add_argument("--trace", required=True, help="CSV with TIMESTAMP,ContextTokens,GeneratedTokens")
    sm.add_argument(
        "--gpu", default="a10g", choices=["l4", "a10g", "v100", "a100-80gb", "h100"], help="the replicas' GPU"
    )
    sm.add_argument(
        "--policy",
        default="ours",
        help="ours (SLO mode, as the README recommends), ours-target (the concurrency target), hpa, "
        "hpa-waiting, keda, kpa, aibrix, step, step-kv, static:N or oracle",
    )
    sm.add_argument("--spec", help="a QwenService YAML whose spec.autoscaling to try (with policy ours)")
    sm.add_argument("--seed", type=int, default=0, help="random seed (cold starts, routing, scrapes)")
    sm.add_argument("--min", type=int, default=1, help="minReplicas (without --spec)")
    sm.add_argument("--max", type=int, default=5, help="maxReplicas (without --spec)")
    sm.add_argument(
        "--router",
        choices=ROUTERS,
        default="random",
        help="how requests reach a pod: random (a Service), least (a least-requests gateway) or builtin "
        "(spec.routing.mode Builtin: our router's picking and holding)",
    )
    sm.add_argument(
        "--shared-prompts",
        type=int,
        default=0,
        metavar="APPS",
        help="80%% of requests open with one of APPS applications' system prompts (vLLM's prefix cache)",
    )
    sm.add_argument(
        "--clients",
        type=int,
        default=0,
        help="a closed loop: this many clients, each sending its next request (sizes from the trace) a "
        "think time after its last answer; 0 replays the trace's arrival times",
    )
    sm.add_argument("--think", type=float, default=10.0, help="closed loop: mean think time, seconds")
    sm.add_argument("--scrape-interval", type=int, default=15, help="Prometheus scrape interval, seconds")
    sm.add_argument(
        "--cold-start",
        choices=list(COLD_STARTS),
        default="default",
        help=(
            "pod created to Ready: "
            + ", ".join(f"{k} (median {v.median:.0f} s, p95 {v.p95:.0f} s)" for k, v in COLD_STARTS.items())
            + "; hub: each replica downloads the weights, cached: a prefilled model cache"
        ),
    )
    sm.add_argument("--png", default="build/simulation.png", help="timeline plot to write ('' for none)")
    sm.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    sm.set_defaults(func=cmd_simulate)
