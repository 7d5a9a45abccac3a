"""vLLM's start-up phases from its log: a real vLLM 0.32 capture (CPU, eager) and the GPU messages."""

# ruff: noqa: E501  (log lines are as long as vLLM writes them)

from __future__ import annotations

from qwen_tools import vllmlog
from tests.conftest import DATA


def test_a_real_cpu_start_shows_its_weights_engine_and_server_up() -> None:
    """tests/data/vllm-0.32-cpu-startup.log: one server of make e2e (paths shortened). Eager mode:
    nothing compiled, no CUDA graphs."""
    got = vllmlog.phases((DATA / "vllm-0.32-cpu-startup.log").read_text())
    assert got == {
        "weights": 0.01,
        "compile": None,
        "graph_capture": None,
        "engine_init": 0.03,
        "compile_cache": None,
        "serving": 28.0,  # 12:20:43, its first line, to 12:21:11, "Starting vLLM server on"
    }


# The lines a GPU start adds, from vLLM 0.32's format strings (gpu_model_runner.py, compilation/
# backends.py and monitor.py), with two workers (tensor parallelism): each logs its own.
GPU = """\
(APIServer pid=1) INFO 12-07 09:00:00 [api_utils.py:347] non-default args: {}
(Worker_TP0 pid=7) INFO 12-07 09:00:31 [gpu_model_runner.py:5150] Model loading took 7.1 GiB memory and 28.5 seconds
(Worker_TP1 pid=8) INFO 12-07 09:00:32 [gpu_model_runner.py:5150] Model loading took 7.1 GiB memory and 29.25 seconds
(Worker_TP0 pid=7) INFO 12-07 09:00:40 [backends.py:296] Directly load the compiled graph(s) for compile range (1, 8192) from the cache, took 3.012 s
(Worker_TP1 pid=8) INFO 12-07 09:00:41 [backends.py:399] Compiling a graph for compile range (1, 8192) takes 21.40 s
(Worker_TP0 pid=7) INFO 12-07 09:00:42 [monitor.py:62] torch.compile took 9.80 s in total
(Worker_TP1 pid=8) INFO 12-07 09:01:05 [monitor.py:62] torch.compile took 33.60 s in total
(Worker_TP0 pid=7) INFO 12-07 09:01:20 [gpu_model_runner.py:6582] Graph capturing finished in 14 secs, took 0.52 GiB
(EngineCore pid=5) INFO 12-07 09:01:22 [core.py:403] init engine (profile, create kv cache, warmup model) took 49.71 s
(APIServer pid=1) INFO 12-07 09:01:30 [entry.py:140] Starting vLLM server on http://0.0.0.0:8000
"""


def test_a_gpu_start_shows_compilation_graphs_and_whether_the_compile_cache_served() -> None:
    got = vllmlog.phases(GPU)
    assert got == {
        "weights": 29.25,
        "compile": 33.6,
        "graph_capture": 14.0,
        "engine_init": 49.71,
        "compile_cache": "miss",  # one worker compiled: the cache did not serve the whole start
        "serving": 90.0,
    }
    hit = "\n".join(line for line in GPU.splitlines() if "Compiling a graph" not in line)
    assert vllmlog.phases(hit)["compile_cache"] == "hit"
    assert vllmlog.phases("no log lines at all\n")["serving"] is None
