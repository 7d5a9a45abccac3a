"""The release path: versions in lockstep, the chart packaged (and pushed as an OCI artifact), and the
chart's README generated from its commented values and schema.

Verbs (``qwen-operator ...``): ``chart`` packages ``charts/qwen-operator`` into ``build/chart/`` after
checking that the chart's version and appVersion equal the Python package's version (and a release
tag's, with ``--tag``), and pushes it with ``--push oci://REGISTRY/PATH``; ``chart-readme`` writes (or,
with ``--check``, compares) the chart's README.md. ``make chart``, ``make chart-push`` and
``.github/workflows/release.yml`` call them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qwen_operator.api import DEFAULT_CHAT_UI_IMAGE, DEFAULT_ROUTER_IMAGE

ROOT_PYPROJECT = Path("pyproject.toml")
ROUTER_PYPROJECT = Path("router/pyproject.toml")
CHART = Path("charts/qwen-operator")


def versions(
    chart: Path = CHART, pyproject: Path = ROOT_PYPROJECT, router: Path = ROUTER_PYPROJECT
) -> dict[str, str]:
    """The versions that must agree: the Python package's, the chart's and its appVersion, the router's."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    project = tomllib.loads(pyproject.read_text())["project"]
    return {
        "pyproject.toml version": str(project["version"]),
        "Chart.yaml version": str(meta["version"]),
        "Chart.yaml appVersion": str(meta["appVersion"]),
        # The chat page's image is released with the operator (spec.chatUI.image's default).
        "the chat page's default image tag": DEFAULT_CHAT_UI_IMAGE.rsplit(":", 1)[-1],
        # So is the router (spec.routing.builtin.image's default), from its own package.
        "router/pyproject.toml version": str(tomllib.loads(router.read_text())["project"]["version"]),
        "the router's default image tag": DEFAULT_ROUTER_IMAGE.rsplit(":", 1)[-1],
    }


def lockstep_errors(found: Mapping[str, str], tag: str | None = None) -> list[str]:
    """What disagrees: every version must equal the package's, and a tag ``vX.Y.Z`` must name it."""
    want = found["pyproject.toml version"]
    errors = [f"{name} is {value}, not {want}" for name, value in found.items() if value != want]
    if tag is not None and tag.removeprefix("v") != want:
        errors.append(f"the tag {tag} does not name version {want}")
    return errors


# ------------------------------------------------------------------------------------- chart README


@dataclass(frozen=True)
class Value:
    key: str  # dotted path
    type: str
    default: str
    description: str


def _comments(values_text: str) -> dict[str, str]:
    """The ``# --`` comment block above each key of values.yaml, by dotted path."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key)
    block: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            block = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if block is not None:
                block.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if match is None:
            if not stripped:
                block = None  # a comment block belongs to the key right below it
            continue
        indent, key = len(match[1]), match[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if block is not None:
            out[".".join(k for _, k in stack)] = " ".join(block).strip()
        block = None
    return out


def _schema_at(schema: Mapping[str, Any], path: list[str]) -> Mapping[str, Any]:
    node: Mapping[str, Any] = schema
    for key in path:
        node = node.get("properties", {}).get(key, {})
    return node


def _type(node: Mapping[str, Any], value: Any) -> str:
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind:
        return str(kind)
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(value), "object"
    )


def _section(value: Any, path: list[str], comments: Mapping[str, str]) -> bool:
    """A map whose keys are documented values of their own (not a map value such as labels)."""
    return isinstance(value, dict) and any(".".join([*path, k]) in comments for k in value)


def _walk(
    values: Mapping[str, Any], prefix: list[str], comments: Mapping[str, str]
) -> Iterator[tuple[list[str], Any, bool]]:
    for key, value in values.items():
        path = [*prefix, key]
        section = _section(value, path, comments)
        yield path, value, section
        if section:
            yield from _walk(value, path, comments)


def chart_values(chart: Path = CHART) -> list[Value]:
    """Every key of values.yaml with its schema type, default and comment."""
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((chart / "values.schema.json").read_text())
    comments = _comments(text)
    out = []
    for path, value, section in _walk(values, [], comments):
        key = ".".join(path)
        default = "" if section else json.dumps(value)
        out.append(Value(key, _type(_schema_at(schema, path), value), default, comments.get(key, "")))
    return out


def _row(v: Value) -> str:
    default = f"`{v.default}`" if v.default else ""
    description = v.description.replace("|", "\\|")
    return f"| `{v.key}` | {v.type} | {default} | {description} |"


def chart_readme(chart: Path = CHART) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    name, version = meta["name"], meta["version"]
    rows = [_row(v) for v in chart_values(chart)]
    return "\n".join(
        [
            f"# {name}",
            "",
            "<!-- Generated by `qwen-operator chart-readme` (make manifests) from values.yaml and",
            "     values.schema.json; a test fails when it drifts. Edit those, not this file. -->",
            "",
            f"{meta['description']}.",
            "",
            f"Chart version {version}, operator version {meta['appVersion']} (always the same: they are",
            f"released together). Kubernetes {meta['kubeVersion'].removesuffix('-0')}.",
            "",
            "## Install",
            "",
            "Until a registry publishes the image and the chart, build and push your own image, then install",
            "the chart from a checkout (the repository's docs/install.md has every step):",
            "",
            "```console",
            "$ make image-push IMAGE=registry.example.com/qwen-operator:" + str(meta["appVersion"]),
            f"$ helm install {name} charts/{name} --namespace {name} --create-namespace \\",
            "    --set image.repository=registry.example.com/qwen-operator \\",
            "    --set monitoring.podMonitor.enabled=true \\",
            "    --set monitoring.podMonitor.labels.release=kube-prometheus-stack",
            "```",
            "",
            "A released chart is an OCI artifact:",
            "",
            "```console",
            f"$ helm install {name} oci://ghcr.io/qwenops/charts/{name} --version {version} \\",
            f"    --namespace {name} --create-namespace",
            "```",
            "",
            "The CRD (QwenService) is in `crds/`: Helm installs it once and never upgrades or deletes it;",
            "apply the new `crds/` with kubectl before upgrading the chart.",
            "",
            "## Values",
            "",
            "values.schema.json rejects unknown keys and wrong types, so a typo fails the install.",
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


# --------------------------------------------------------------------------------------------- verbs


def cmd_chart(args: argparse.Namespace) -> int:
    import helm_python as helm

    chart = Path(args.chart)
    errors = lockstep_errors(versions(chart, Path(args.pyproject)), args.tag)
    if errors:
        print("chart: versions out of step:\n  - " + "\n  - ".join(errors), file=sys.stderr)
        return 1
    if (chart / "README.md").read_text() != chart_readme(chart):
        print(f"chart: {chart}/README.md is stale; run qwen-operator chart-readme", file=sys.stderr)
        return 1
    Path(args.output).mkdir(parents=True, exist_ok=True)
    archive = helm.package(str(chart), destination=args.output)
    print(archive)
    if args.push:
        result = helm.push(archive, args.push)
        print(f"pushed {archive} to {args.push}: {result}")
    return 0


def cmd_chart_readme(args: argparse.Namespace) -> int:
    chart = Path(args.chart)
    text = chart_readme(chart)
    target = chart / "README.md"
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is stale: run qwen-operator chart-readme", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


def add_chart(sub: Any) -> None:
    c = sub.add_parser(
        "chart",
        help="package the Helm chart (versions checked in lockstep); --push: to an OCI registry",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("--chart", default=str(CHART), help="the chart folder")
    c.add_argument("--pyproject", default=str(ROOT_PYPROJECT), help="the operator's pyproject.toml")
    c.add_argument("--output", default="build/chart", help="folder for the .tgz")
    c.add_argument("--tag", help="a release tag (vX.Y.Z) that must name the version")
    c.add_argument("--push", help="an OCI repository root, e.g. oci://ghcr.io/qwenops/charts")
    c.set_defaults(func=cmd_chart)


def add_chart_readme(sub: Any) -> None:
    r = sub.add_parser("chart-readme", help="write the chart's README.md from its values and schema")
    r.add_argument("--chart", default=str(CHART), help="the chart folder")
    r.add_argument("--check", action="store_true", help="only say whether it is up to date")
    r.set_defaults(func=cmd_chart_readme)
