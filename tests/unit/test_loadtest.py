"""The load kit's workload, plan, stream reading and summary (qwen_tools.loadtest.workload)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_tools.loadtest import workload
from tests.conftest import DATA

TRACE = DATA / "traces" / "conv-5min.csv"


def chunk(content: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, object] = {"choices": [] if content is None else [{"delta": {"content": content}}]}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body)


def clock(*times: float) -> Iterator[float]:
    return iter(times)


def test_plan_parses_stages_and_says_when_it_ends() -> None:
    plan = workload.parse_plan("30s:2, 2m:12,1.5m:4")
    assert plan == [workload.Stage(30, 2), workload.Stage(120, 12), workload.Stage(90, 4)]
    assert [workload.users_at(plan, t) for t in (0, 29.9, 30, 149.9, 150, 239.9)] == [2, 2, 12, 12, 4, 4]
    assert workload.users_at(plan, 240) is None


@pytest.mark.parametrize("bad", ["", "30s", "30s:x", "soon:3", "30s:-1"])
def test_bad_plans_say_what_is_expected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"plan|duration"):
        workload.parse_plan(bad)


def test_durations() -> None:
    assert [workload.seconds(t) for t in ("90", "90s", "1.5m", "2h", "250ms")] == [90, 90, 90, 7200, 0.25]


def test_a_stream_gives_ttft_tpot_and_the_server_s_token_count() -> None:
    usage = chunk(usage={"completion_tokens": 3, "prompt_tokens": 11})
    lines = [": keep-alive", chunk("Hel"), chunk("lo"), chunk(""), chunk("!"), usage, "data: [DONE]"]
    result = workload.Result("chat", "http://a", start=100.0)
    times = clock(100.5, 100.6, 100.7, 100.9)
    workload.read_stream(result, [line.encode() for line in lines], lambda: next(times))
    assert result.ok
    assert result.ttft == pytest.approx(0.5)
    assert result.output_tokens == 3
    assert result.prompt_tokens == 11
    assert result.tpot == pytest.approx((100.9 - 100.5) / 2)
    record = result.record()
    assert record["ok"] is True
    assert record["ttft"] == pytest.approx(0.5)
    assert "token_times" not in record


def test_an_error_chunk_or_a_cut_stream_fails_the_request() -> None:
    error = 'data: {"error": {"message": "EngineCore encountered an issue", "code": 500}}'
    cut = workload.read_stream(
        workload.Result("chat", "u", 0.0), [chunk("a"), error, "data: [DONE]"], lambda: 1.0
    )
    assert not cut.ok
    assert cut.error == "EngineCore encountered an issue"
    short = workload.read_stream(workload.Result("chat", "u", 0.0), [chunk("a")], lambda: 1.0)
    assert short.error == "stream ended before [DONE]"
    garbage = workload.read_stream(workload.Result("chat", "u", 0.0), ["data: {nope"], lambda: 1.0)
    assert garbage.error is not None
    assert garbage.error.startswith("bad stream chunk")


def test_the_mix_is_reproducible_and_clamped() -> None:
    a = [workload.from_mix(random.Random(7)) for _ in range(3)]
    b = [workload.from_mix(random.Random(7)) for _ in range(3)]
    assert a == b
    rng = random.Random(1)
    drawn = [workload.from_mix(rng, max_prompt_tokens=50, max_output_tokens=40) for _ in range(300)]
    assert {r.kind for r in drawn} == {p.kind for p in workload.MIX}
    assert max(r.max_tokens for r in drawn) <= 40
    assert max(len(r.messages[0]["content"].split()) for r in drawn) <= 50 + 20  # padding + the question
    payload = drawn[0].payload("m", ignore_eos=True)
    assert payload["stream"] is True
    assert payload["ignore_eos"] is True
    assert "ignore_eos" not in drawn[0].payload("m", ignore_eos=False)


def test_a_trace_replays_its_requests_faster_and_clamped() -> None:
    lines = TRACE.read_text().splitlines()
    requests = workload.from_trace(TRACE, speedup=10, max_prompt_tokens=300, max_output_tokens=100)
    assert len(requests) == len(lines) - 1
    assert requests[0].at == 0
    assert requests[-1].at == pytest.approx(max(r.at or 0 for r in requests))
    assert 29 < (requests[-1].at or 0) <= 30  # five minutes, ten times faster
    assert max(r.max_tokens for r in requests) == 100
    assert max(r.prompt_tokens_hint or 0 for r in requests) == 300
    first = lines[1].split(",")
    assert requests[0].prompt_tokens_hint == min(int(first[1]), 300)
    with pytest.raises(ValueError, match="speed-up"):
        workload.from_trace(TRACE, speedup=0)


def test_endpoints_follow_the_file_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "endpoints"
    endpoints = workload.Endpoints(path=path)
    assert endpoints.next() is None  # no file yet: nothing to send to
    path.write_text("127.0.0.1:1\n# a comment\n127.0.0.1:2\n")
    assert {endpoints.next(), endpoints.next()} == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
    path.write_text("https://svc:8000\n")
    assert endpoints.next() == "https://svc:8000"
    assert workload.Endpoints(host="http://svc:8000/").next() == "http://svc:8000"
    with pytest.raises(ValueError, match="host"):
        workload.Endpoints()


def test_summary_counts_failures_and_percentiles() -> None:
    results = []
    for i in range(10):
        r = workload.Result("chat", "u", start=float(i), first_token=i + 0.1 * (i + 1), end=i + 2.0)
        r.output_tokens = 10
        results.append(r)
    results.append(workload.Result("chat", "u", start=3.0, end=3.5, error="HTTP 503: busy"))
    summary = workload.summarize(results)
    assert (summary["requests"], summary["ok"], summary["failed"]) == (11, 10, 1)
    assert summary["errors"] == {"HTTP 503: busy": 1}
    assert summary["ttft"]["p50"] == pytest.approx(0.5)
    assert summary["ttft"]["p99"] == pytest.approx(1.0)
    assert summary["output_tokens"] == 100
    assert summary["output_tokens_per_s"] == pytest.approx(100 / 11)
    text = workload.format_summary(summary)
    assert "failed 1" in text
    assert "1 x HTTP 503: busy" in text
    assert workload.percentile([], 50) is None


def test_the_in_cluster_job_is_valid_and_its_image_carries_what_the_kit_imports() -> None:
    import ast

    import yaml

    from tests.conftest import ROOT
    from tests.k8s import validate_k8s

    job = yaml.safe_load((ROOT / "examples" / "loadtest" / "job.yaml").read_text())
    validate_k8s(job)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # The image copies the kit's modules; every qwen_tools module they import is among them.
    dockerfile = (ROOT / "images" / "loadtest" / "Dockerfile").read_text()
    copied = {
        part for line in dockerfile.splitlines() if line.startswith("COPY tools/") for part in line.split()
    }
    kit = ROOT / "tools" / "qwen_tools" / "loadtest"
    for module in kit.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qwen_tools."):
                path = "tools/" + node.module.replace(".", "/")  # type: ignore[union-attr]
                for name in node.names:
                    # the module itself, or the whole package folder it comes from
                    assert any(c == path or c.startswith(f"{path}/{name.name}.py") for c in copied), (
                        module.name,
                        node.module,
                        name.name,
                    )
        assert not any(
            isinstance(n, ast.ImportFrom) and (n.module or "").startswith("qwen_operator")
            for n in ast.walk(ast.parse(module.read_text()))
        ), "the load image holds no operator"
    assert "locust==2.47.0" in dockerfile
