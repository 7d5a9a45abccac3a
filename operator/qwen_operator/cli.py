"""``qwen-operator``: run the operator, render QwenServices, generate the CRD."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from qwen_operator import api, crd, render, settings, validation

MAX_DEPTH = 100  # a QwenService nests a dozen levels; PyYAML recurses once per level


class NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*ref``): a QwenService never needs them, and nested aliases expand
    exponentially (a "billion laughs" file of a few hundred bytes takes minutes and gigabytes); and
    nested at most MAX_DEPTH levels (deeper, PyYAML runs out of stack)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in QwenService files", event.start_mark
            )
        if self.depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def documents(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        try:
            docs = list(yaml.load_all(text, Loader=NoAliasLoader))
        except yaml.YAMLError as exc:
            raise SystemExit(f"{path}: not a usable YAML file: {exc}") from None
        except RecursionError:  # the scanner's own recursion, on thousands of '[' in a row
            raise SystemExit(f"{path}: not a usable YAML file: nested too deeply") from None
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == api.KIND:
                yield path, doc


def cmd_render(args: argparse.Namespace) -> int:
    """Print the Deployment and Service each QwenService in the files would get."""
    objects: list[dict[str, Any]] = []
    failed = False
    found = False
    for path, doc in documents(args.files):
        found = True
        doc.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        config = settings.OperatorSettings()
        try:
            svc = validation.parse(doc, config.policy())
        except validation.InvalidSpec as exc:
            name = doc.get("metadata", {}).get("name", "?")
            print(f"{path}: QwenService {name} is invalid:", file=sys.stderr)
            for message in exc.messages:
                print(f"  - {message}", file=sys.stderr)
            failed = True
            continue
        objects += render.render_all(svc, config.render_defaults())
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


def _no_cluster() -> str | None:
    """Why the operator cannot reach a cluster before it tries (in-cluster, or a kubeconfig file)."""
    import os

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    paths = paths or [os.path.expanduser("~/.kube/config")]
    if any(os.path.exists(p) for p in paths):
        return None
    return (
        f"qwen-operator run: no cluster to run against: not in a pod, and no kubeconfig at "
        f"{', '.join(paths)}. Point KUBECONFIG at your cluster's kubeconfig (or run it in the cluster: "
        "helm install, docs/install.md); to try it without a cluster: make demo"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from qwen_operator.settings import OperatorSettings

    try:
        config = OperatorSettings()
    except ValidationError as exc:
        for error in exc.errors():
            loc = error["loc"]
            name = f"QWEN_OPERATOR_{str(loc[0]).upper()}" if loc else "QWEN_OPERATOR_* settings"
            print(f"qwen-operator run: {name}: {error['msg']}", file=sys.stderr)
        return 2
    if (missing := _no_cluster()) is not None:
        print(missing, file=sys.stderr)
        return 2
    import asyncio
    import contextlib
    import os

    import kopf

    from qwen_operator import runner

    if os.environ.get("QWEN_OPERATOR_PEERING"):
        print(
            "qwen-operator run: QWEN_OPERATOR_PEERING is no longer used; for several replicas set "
            "QWEN_OPERATOR_LEADER_ELECTION_NAMESPACE (the Helm chart does): docs/install.md",
            file=sys.stderr,
        )
        return 2
    namespaces = args.namespace or config.namespaces
    kopf.configure(verbose=args.verbose)
    code = 0
    with contextlib.suppress(asyncio.CancelledError):  # kopf ends cancelled after a stop signal
        code = asyncio.run(runner.run(config, namespaces))
    return code


# Verbs the tooling distribution (qwen-operator-tools, tools/ in the repository) adds through the entry
# point group below; the operator image has only the runtime, so there they explain where to get them.
TOOLING_GROUP = "qwen_operator.commands"
TOOLING_VERBS = {
    "manifests": "render the Helm chart with defaults into one kubectl-applyable file",
    "simulate": "replay a request trace against a simulated vLLM fleet under a scaling policy",
    "tune": "fit one replica's capacity at a latency SLO from a load test and print the autoscaling block",
}


def _tooling(sub: Any) -> None:
    """Add the tooling's verbs where it is installed, and a verb that says so where it is not."""
    from importlib.metadata import entry_points

    found = set()
    for point in entry_points(group=TOOLING_GROUP):
        try:
            register = point.load()
        except ImportError:  # declared, but its dependencies are not installed
            continue
        register(sub)
        found.add(point.name)
    for verb, text in TOOLING_VERBS.items():
        if verb not in found:
            stub = sub.add_parser(verb, help=f"{text} (tooling; not installed here)")
            stub.set_defaults(func=lambda _args, verb=verb: _not_installed(verb), any_arguments=True)


def _not_installed(verb: str) -> int:
    print(
        f"qwen-operator {verb}: this is tooling, which the operator image does not include. From a "
        "checkout of the repository: make install (or pip install -e . -e tools).",
        file=sys.stderr,
    )
    return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qwen-operator")
    except PackageNotFoundError:  # run from a source tree without an install
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-operator", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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

    _tooling(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args, unknown = p.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
