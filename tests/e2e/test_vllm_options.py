"""The committed table of vLLM's options is what the real `vllm serve` parser has (make e2e)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qwen_operator import api, vllm_flags
from qwen_operator.vllm_options import OPTIONS, VLLM_VERSION

pytestmark = pytest.mark.e2e
GENERATOR = Path(__file__).with_name("vllm_options.py")


def test_the_option_table_is_the_real_parser_s(vllm_python: str) -> None:
    run = subprocess.run(
        [vllm_python, str(GENERATOR)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "VLLM_NO_USAGE_STATS": "1"},
    )
    tree = ast.parse(run.stdout)
    values = {
        node.targets[0].id if isinstance(node, ast.Assign) else node.target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
    }
    assert values["VLLM_VERSION"] == VLLM_VERSION
    assert values["OPTIONS"] == OPTIONS, "vLLM's options changed: run `make vllm-options`"


# vLLM's own `vllm serve` parser, as `p`, in a script run by the vLLM environment's Python.
SERVE_PARSER = (
    "import sys, json\n"
    "from vllm.entrypoints.cli.serve import ServeSubcommand\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser()\n"
    "ServeSubcommand().subparser_init(p.add_subparsers())\n"
)


def ask_vllm(vllm_python: str, script: str, argument: Any) -> Any:
    """Run ``SERVE_PARSER`` + ``script`` with ``argument`` (as JSON, in sys.argv[1]); the JSON it prints
    last."""
    run = subprocess.run(
        [vllm_python, "-c", SERVE_PARSER + script, json.dumps(argument)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "VLLM_NO_USAGE_STATS": "1"},
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_refused_spelling_is_one_the_real_parser_maps_to_a_managed_option(vllm_python: str) -> None:
    """Ask vLLM's own parser what each spelling sets: the operator refuses exactly those that reach a
    managed option (and lets through those that reach another)."""
    # (Spellings whose effect is visible against the defaults: --no-enforce-eager sets the default.)
    spellings = [
        "--api_key=x", "--api-k=x", "--api-key.x=1", "-tp=2", "-qawq", "--served_model_name=x",
        "--device-memory-utilization=0.5", "--max-model=100", "--port=9", "--dtype=half",
        "--enable-prefix-caching", "--max-num-batched-tokens=64", "--seed=3", "--no-enable-prefix-caching",
    ]  # fmt: skip
    script = (
        "base = vars(p.parse_args(['serve', 'm']))\n"
        "out = {}\n"
        "for arg in json.loads(sys.argv[1]):\n"
        "    got = vars(p.parse_args(['serve', 'm', arg]))\n"
        "    out[arg] = sorted(k for k in got if got[k] != base[k])\n"
        "print(json.dumps(out))\n"
    )
    changed = ask_vllm(vllm_python, script, spellings)
    for arg, dests in changed.items():
        reaches_managed = bool(set(dests) & {*api.MANAGED_FLAGS, "config"})
        refused = vllm_flags.managed_option(arg, api.MANAGED_FLAGS) is not None
        assert refused == reaches_managed, (arg, dests)


def test_every_load_format_the_crd_offers_is_one_vllm_parses_and_has_a_loader_for(vllm_python: str) -> None:
    """spec.engine.loadFormat's values: vLLM's serve parser takes each as --load-format, and its model
    loader registry has a loader for it (a name it does not know fails at start-up, after the pull)."""
    script = (
        "from vllm.model_executor.model_loader import _LOAD_FORMAT_TO_MODEL_LOADER as loaders\n"
        "out = {f: [vars(p.parse_args(['serve', 'm', '--load-format', f]))['load_format'], f in loaders]\n"
        "       for f in json.loads(sys.argv[1])}\n"
        "print(json.dumps(out))\n"
    )
    parsed = ask_vllm(vllm_python, script, list(api.LOAD_FORMATS))
    assert parsed == {f: [f, True] for f in api.LOAD_FORMATS}
