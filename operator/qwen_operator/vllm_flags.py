"""Which spellings of a `vllm serve` flag reach a given option (pure).

vLLM's parser is more forgiving than it looks: it turns ``_`` into ``-`` in a ``--flag`` name, reads
``--flag.key value`` as a JSON field of ``--flag``, loads any flag from ``--config FILE``, and, being an
argparse parser with abbreviations on, takes any unambiguous prefix (``--api-k``) and short aliases
(``-tp``, ``-q``, ``-qawq``). To keep extraArgs away from the flags the operator sets, each of those
spellings must be caught: :func:`managed_option` does it in the operator and :func:`managed_pattern`
builds the same test as one regular expression for the CRD's CEL rule.
"""

from __future__ import annotations

import functools

from qwen_operator.vllm_options import OPTIONS

ALL_OPTIONS = frozenset(s for strings in OPTIONS.values() for s in strings)
ALWAYS_REFUSED = ("config",)  # --config FILE could set any managed flag


def _spellings(dest: str) -> tuple[str, ...]:
    return OPTIONS.get(dest, (f"--{dest.replace('_', '-')}",))


@functools.cache
def _managed(dests: tuple[str, ...]) -> tuple[str, ...]:
    """Every option string of ``dests`` and --config, sorted (computed once per set of dests: the
    operator checks extraArgs on every parse)."""
    return tuple(sorted({s for dest in (*dests, *ALWAYS_REFUSED) for s in _spellings(dest)}))


def _name(arg: str) -> str:
    """The option name argparse will look up for ``arg``, after vLLM's own rewriting."""
    name = arg.split("=", 1)[0].split(".", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    return name


def managed_option(arg: str, dests: tuple[str, ...]) -> str | None:
    """The managed option ``arg`` would set, if any (``dests`` are vLLM option dests)."""
    if not arg.startswith("-") or arg == "-" or arg == "--":
        return None
    managed = _managed(dests)
    name = _name(arg)
    if name in managed:
        return name
    if name in ALL_OPTIONS:
        return None  # an exact match of another option wins over any abbreviation
    if not name.startswith("--") and name[:2] in managed:
        return name[:2]  # a one-letter alias with its value attached (-qawq)
    return next((m for m in managed if m.startswith(name) and m[:2] == name[:2]), None)


def _alternatives(words: list[str]) -> str:
    """A regular expression matching exactly the non-empty prefixes of ``words`` (a trie, so it stays
    short); '-' in a word also matches '_'."""
    children: dict[str, list[str]] = {}
    for word in words:
        children.setdefault(word[0], []).append(word[1:])
    parts = []
    for first, rests in sorted(children.items()):
        rests = [r for r in rests if r]
        char = "[-_]" if first == "-" else first
        parts.append(char + (f"({_alternatives(rests)})?" if rests else ""))
    return parts[0] if len(parts) == 1 else "|".join(parts)


def managed_pattern(dests: tuple[str, ...]) -> str:
    """One RE2 pattern (no backslashes, so it can sit in a CEL string) that matches every extraArgs item
    :func:`managed_option` refuses."""
    managed = set(_managed(dests))
    clash = sorted(o for o in ALL_OPTIONS - managed if any(m.startswith(o) for m in managed))
    if clash:  # the trie would refuse another option's exact name: list them in the generator first
        raise ValueError(f"options that are prefixes of managed ones: {clash}")
    long = sorted(m[2:] for m in managed if m.startswith("--"))
    short = sorted(m[1:] for m in managed if not m.startswith("--"))
    one_letter = sorted(s for s in short if len(s) == 1)
    tail = "([.=].*)?$"
    parts = [f"^--({_alternatives(long)}){tail}", f"^-({_alternatives(short)}){tail}"]
    if one_letter:
        parts.append(f"^-[{''.join(one_letter)}].*$")
    return "|".join(parts)


def canonical(dests: tuple[str, ...]) -> list[str]:
    """The long spelling of each managed option (for messages)."""
    return sorted({_spellings(d)[0] for d in (*dests, *ALWAYS_REFUSED)})
