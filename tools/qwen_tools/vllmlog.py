"""vLLM's own start-up phases, read from its log (vLLM 0.32's messages; what the API cannot see).

The operator sees a pod's engine phase as one span (container start to Ready). vLLM logs what fills
it: the weights loaded, torch.compile (from scratch or from its cache in ``VLLM_CACHE_ROOT``), the CUDA
graphs captured, the engine initialised, the server listening. The e2e records these for every real
vLLM server it runs; the messages are those of vLLM 0.32 (``vllm/model_executor/model_loader/
default_loader.py``, ``vllm/v1/worker/gpu_model_runner.py``, ``vllm/compilation/backends.py`` and
``monitor.py``, ``vllm/v1/engine/core.py``, ``vllm/entrypoints/launchers/api_server/entry.py``).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

# "(APIServer pid=2041) INFO 12-07 12:14:51 [entry.py:140] Starting vLLM server on http://..."
_LINE = re.compile(
    r"^(?:\([^)]*\) )?(?:INFO|WARNING|DEBUG|ERROR) (\d\d-\d\d \d\d:\d\d:\d\d) \[[^\]]*\] (.*)$"
)
_DURATIONS = {  # phase: the message that states its length (seconds, vLLM's own clock)
    "weights": re.compile(r"^(?:Loading weights took|Model loading took .* and) ([\d.]+) seconds"),
    "compile": re.compile(r"torch\.compile took ([\d.]+) s in total"),
    "graph_capture": re.compile(r"^Graph capturing finished in ([\d.]+) secs"),
    "engine_init": re.compile(r"^init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
}
_FROM_CACHE = re.compile(r"Directly load the compiled graph\(s\) for compile range .* from the cache")
_COMPILED = re.compile(r"Compiling a graph for compile range .* takes")
_SERVING = re.compile(r"^Starting vLLM server on ")


def phases(text: str) -> dict[str, Any]:
    """What the log says of one start: ``weights``, ``compile``, ``graph_capture`` and ``engine_init``
    (seconds, as vLLM measured them, the longest over its workers; None where it did not log one:
    compilation and graphs are off in eager mode), ``compile_cache`` (``hit`` when every graph came
    from the cache, ``miss`` when one was compiled, None when nothing was compiled), and ``serving``:
    seconds from vLLM's first log line to "Starting vLLM server on" (the log's clock is whole seconds;
    the interpreter's start before the first line is not in it)."""
    out: dict[str, Any] = {phase: None for phase in _DURATIONS}
    first: datetime.datetime | None = None
    serving: datetime.datetime | None = None
    hits = misses = 0
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        at = datetime.datetime.strptime(f"2000-{match.group(1)}", "%Y-%m-%d %H:%M:%S")  # (a leap year)
        first = first or at
        message = match.group(2)
        for phase, pattern in _DURATIONS.items():
            found = pattern.search(message)
            if found is not None:
                out[phase] = max(out[phase] or 0.0, float(found.group(1)))  # (one line per worker)
        hits += bool(_FROM_CACHE.search(message))
        misses += bool(_COMPILED.search(message))
        if serving is None and _SERVING.search(message):
            serving = at
    out["compile_cache"] = "miss" if misses else "hit" if hits else None
    out["serving"] = None if first is None or serving is None else (serving - first).total_seconds()
    return out
