"""Print operator/qwen_operator/vllm_options.py from the real vLLM's `vllm serve` parser.

Run with the e2e environment's interpreter (``make vllm-options``); tests/e2e checks the committed
module against it, so a vLLM upgrade that adds a spelling of a managed flag fails there.
"""

from __future__ import annotations

import sys


def options() -> dict[str, list[str]]:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = ServeSubcommand().subparser_init(FlexibleArgumentParser().add_subparsers())
    if not parser.allow_abbrev:
        raise SystemExit("vllm serve no longer accepts abbreviations: simplify qwen_operator.vllm_flags")
    found: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.option_strings:
            found.setdefault(action.dest, []).extend(action.option_strings)
    return found


def module_text() -> str:
    import vllm

    lines = [
        '"""Every option of `vllm serve` by its dest, from vLLM\'s own parser (generated: do not edit).',
        "",
        "``make vllm-options`` writes it with the e2e environment's vLLM; ``make e2e`` checks it.",
        '"""',
        "",
        f'VLLM_VERSION = "{vllm.__version__}"',
        "OPTIONS: dict[str, tuple[str, ...]] = {",
    ]
    for dest, strings in sorted(options().items()):
        lines.append(f"    {dest!r}: ({', '.join(repr(s) for s in strings)},),")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(module_text())
