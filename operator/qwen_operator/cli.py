"""``qwen-operator``: run the operator, render QwenServices, generate the CRD."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from qwen_operator import api, crd, render, settings, validation


class NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*ref``): a QwenService never needs them, and nested aliases expand
    exponentially (a "billion laughs" file of a few hundred bytes takes minutes and gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in QwenService files", event.start_mark
            )
        return super().compose_node(parent, index)


def _documents(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        try:
            docs = list(yaml.load_all(text, Loader=NoAliasLoader))
        except yaml.YAMLError as exc:
            raise SystemExit(f"{path}: not a usable YAML file: {exc}") from None
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == api.KIND:
                yield path, doc


def cmd_render(args: argparse.Namespace) -> int:
    """Print the Deployment and Service each QwenService in the files would get."""
    objects: list[dict[str, Any]] = []
    failed = False
    found = False
    for path, doc in _documents(args.files):
        found = True
        doc.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        try:
            svc = validation.parse(doc, settings.OperatorSettings().policy())
        except validation.InvalidSpec as exc:
            name = doc.get("metadata", {}).get("name", "?")
            print(f"{path}: QwenService {name} is invalid:", file=sys.stderr)
            for message in exc.messages:
                print(f"  - {message}", file=sys.stderr)
            failed = True
            continue
        objects += render.render_all(svc)
    if not found:
        print("no QwenService found in " + ", ".join(args.files), file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 1 if failed else 0


def cmd_crds(args: argparse.Namespace) -> int:
    """Write (or print) the CRD generated from the model; optionally refresh the README's spec table."""
    text = crd.crd_yaml()
    for folder in args.output or ():
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{api.PLURAL}.yaml").write_text(text)
    if not args.output and not args.readme:
        sys.stdout.write(text)
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(settings.with_settings(crd.with_reference(readme.read_text())))
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    """Write deploy/install.yaml, rendered from the Helm chart with its defaults."""
    from qwen_operator import install

    text = install.install_yaml(Path(args.chart))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0


def _autoscaling_spec(path: str) -> api.AutoscalingSpec:
    docs = list(_documents([path]))
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
    import json

    from qwen_operator.sim import policies, report, run, score, trace
    from qwen_operator.sim.gpus import GPUS

    try:
        requests = trace.load(args.trace)
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
    )
    try:
        if args.policy != "oracle":
            policies.make(args.policy, lo, hi, spec, GPUS[args.gpu].product)  # fail fast on a bad name
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    with tqdm(total=100, desc=args.policy, unit="%", file=sys.stderr, leave=False) as bar:

        def progress(done: float) -> None:
            bar.update(round(done * 100) - bar.n)

        extra: dict[str, float] = {}
        if args.policy == "oracle":
            outcome = run.run_all(requests, scenario, args.seed, names=(), spec=spec)
            result, summary = outcome.results["oracle"], outcome.summaries["oracle"]
            extra["gpu_hours_lower_bound"] = outcome.lower_bound_gpu_hours
        else:
            result = run.run_policy(requests, scenario, args.policy, args.seed, spec, progress)
            summary = score.summarize(result)
    if args.png:
        report.timeline_png([result], args.png, f"{requests.name} on {args.gpu}, seed {args.seed}")
    if args.json:
        print(json.dumps({**summary.as_dict(), **extra}, sort_keys=True))
    else:
        print(report.table([summary]))
        for key, value in extra.items():
            print(f"{key}: {value:.2f}")
        if args.png:
            print(f"timeline: {args.png}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from qwen_operator import handlers  # noqa: F401  (registers the handlers)
    from qwen_operator.settings import OperatorSettings

    config = OperatorSettings()
    namespaces = args.namespace or config.namespaces
    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=config.liveness_endpoint or None,
        standalone=config.peering is None,
        peering_name=config.peering,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-operator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the operator against the current cluster (kubeconfig or in-cluster)")
    r.add_argument("-n", "--namespace", action="append", help="namespace to watch (repeatable); default: all")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_run)

    rd = sub.add_parser(
        "render", help="print the objects a QwenService file would get (for review and GitOps)"
    )
    rd.add_argument("files", nargs="+", help="YAML files with QwenService documents; - for stdin")
    rd.add_argument("--namespace", default="default", help="namespace for documents that name none")
    rd.set_defaults(func=cmd_render)

    c = sub.add_parser(
        "crds", help="print (or write) the CustomResourceDefinition generated from the API model"
    )
    c.add_argument("--output", action="append", help="folder to write qwenservices.yaml into (repeatable)")
    c.add_argument("--readme", help="README whose spec reference table to regenerate")
    c.set_defaults(func=cmd_crds)

    m = sub.add_parser(
        "manifests", help="render the Helm chart with defaults into one kubectl-applyable file"
    )
    m.add_argument("--chart", default="charts/qwen-operator", help="the chart folder")
    m.add_argument("--output", default="deploy/install.yaml", help="file to write; - for stdout")
    m.set_defaults(func=cmd_manifests)

    sm = sub.add_parser(
        "simulate", help="replay a request trace against a simulated vLLM fleet under a scaling policy"
    )
    sm.add_argument("--trace", required=True, help="CSV with TIMESTAMP,ContextTokens,GeneratedTokens")
    sm.add_argument("--gpu", default="a10g", choices=["l4", "a10g", "v100", "a100-80gb", "h100"])
    sm.add_argument(
        "--policy",
        default="ours",
        help="ours, hpa, hpa-waiting, keda, kpa, aibrix, step, step-kv, static:N or oracle",
    )
    sm.add_argument("--spec", help="a QwenService YAML whose spec.autoscaling to try (with policy ours)")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--min", type=int, default=1, help="minReplicas (without --spec)")
    sm.add_argument("--max", type=int, default=5, help="maxReplicas (without --spec)")
    sm.add_argument("--router", choices=["random", "least"], default="random")
    sm.add_argument("--scrape-interval", type=int, default=15, help="Prometheus scrape interval, seconds")
    sm.add_argument("--cold-start", choices=["fast", "default", "slow"], default="default")
    sm.add_argument("--png", default="simulation.png", help="timeline plot to write ('' for none)")
    sm.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    sm.set_defaults(func=cmd_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
