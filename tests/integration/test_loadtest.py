"""The load kit's Locust file, run headless by the real ``locust`` command against local HTTP servers that
stream OpenAI chat completions as vLLM does (one token per chunk, a usage chunk, ``[DONE]``).

The e2e test (tests/e2e) runs the same Locust file against real vLLM servers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_tools.sim import trace as traces
from tests.chatserver import ChatServer
from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.integration

LOCUSTFILE = ROOT / "tools" / "qwen_tools" / "loadtest" / "locustfile.py"
LOCUST = str(Path(sys.executable).with_name("locust"))


@pytest.fixture
def servers() -> Iterator[list[ChatServer]]:
    started = [ChatServer(), ChatServer()]
    yield started
    for server in started:
        server.close()


def locust(
    tmp_path: Path, *args: str, timeout: float = 60
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    records, summary = tmp_path / "records.jsonl", tmp_path / "summary.json"
    proc = subprocess.run(
        [LOCUST, "-f", str(LOCUSTFILE), "--headless", "--only-summary", "--records", str(records),
         "--summary-json", str(summary), "--stop-timeout", "10", *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
    )  # fmt: skip
    assert summary.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = records.read_text().splitlines()
    return proc.returncode, [json.loads(line) for line in lines], json.loads(summary.read_text())


def test_a_stepped_plan_spreads_streaming_requests_over_the_endpoints(
    servers: list[ChatServer], tmp_path: Path
) -> None:
    endpoints = tmp_path / "endpoints"
    endpoints.write_text("".join(f"{s.address}\n" for s in servers))
    code, records, summary = locust(
        tmp_path, "--endpoints-file", str(endpoints), "--plan", "2s:1,3s:4", "--spawn-rate", "20",
        "--max-output-tokens", "30",
    )  # fmt: skip
    assert code == 0
    assert len(records) >= 20
    assert all(r["ok"] for r in records)
    assert summary["ok"] == len(records)
    assert summary["failed"] == 0
    # Each server got a share; the model name came from /v1/models; the output length was exact.
    for server in servers:
        assert sum(r["url"].endswith(server.address) for r in records) >= len(records) // 4
        assert {b["model"] for b in server.bodies} == {"tiny"}
        assert all(b["stream"] and b["ignore_eos"] for b in server.bodies)
    assert all(1 <= r["output_tokens"] <= 30 for r in records)
    assert all(r["ttft"] is not None and 0 < r["ttft"] <= r["end"] - r["start"] for r in records)
    assert summary["ttft"]["p50"] is not None
    assert summary["output_tokens_per_s"] > 0
    # The plan stepped from one user to four: more requests in flight in the second stage.
    begin = min(r["start"] for r in records)
    early = [r for r in records if r["start"] - begin < 1.5]
    late = [r for r in records if r["start"] - begin > 3]
    assert len(late) > len(early)


def test_a_trace_is_replayed_at_its_arrival_times(servers: list[ChatServer], tmp_path: Path) -> None:
    trace = DATA / "traces" / "conv-5min.csv"
    code, records, _ = locust(
        tmp_path, "--host", f"http://{servers[0].address}", "--model", "tiny", "--workload", "trace",
        "--trace", str(trace), "--speedup", "60", "--max-requests", "40", "-u", "8", "-r", "8",
        "--run-time", "30s", "--max-output-tokens", "8", "--max-prompt-tokens", "64",
    )  # fmt: skip
    assert code == 0
    assert len(records) == 40
    # The first 40 requests of the trace, no earlier than their arrival time divided by 60.
    rows = [line.split(",") for line in trace.read_text().splitlines()[1:41]]
    assert sorted(r["output_tokens"] for r in records) == sorted(min(8, max(1, int(row[2]))) for row in rows)
    starts = sorted(r["start"] for r in records)
    span = starts[-1] - starts[0]
    arrivals = traces.load(trace).arrivals[:40]
    assert span >= arrivals[-1] / 60 - 0.3


def test_a_replay_ends_with_its_trace(servers: list[ChatServer], tmp_path: Path) -> None:
    lines = (DATA / "traces" / "conv-5min.csv").read_text().splitlines()[:11]
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    code, records, _ = locust(
        tmp_path, "--host", f"http://{servers[0].address}", "--workload", "trace", "--trace", str(short),
        "--speedup", "100", "-u", "4", "-r", "4", "--run-time", "60s", "--max-output-tokens", "4",
    )  # fmt: skip
    assert code == 0
    assert len(records) == 10
    assert time.monotonic() - started < 30, "the run went on after the trace's last request"


def test_failures_are_counted_and_fail_the_run(tmp_path: Path) -> None:
    server = ChatServer(fail=True)
    try:
        code, records, summary = locust(
            tmp_path, "--host", f"http://{server.address}", "--model", "tiny", "-u", "2", "-r", "2",
            "--run-time", "2s",
        )  # fmt: skip
    finally:
        server.close()
    assert code != 0  # Locust exits non-zero when requests failed
    assert records
    assert not any(r["ok"] for r in records)
    assert summary["failed"] == len(records)
    assert all(r["error"].startswith("HTTP 503") for r in records)


def test_the_api_key_is_sent_and_a_failing_server_is_not_hammered(tmp_path: Path) -> None:
    server = ChatServer(api_key="s3cret")
    try:
        code, records, _ = locust(
            tmp_path, "--host", f"http://{server.address}", "-u", "1", "-r", "1", "--run-time", "2s",
            "--api-key", "s3cret", "--max-requests", "3",
        )  # fmt: skip
        assert code == 0
        assert len(records) == 3
        assert all(r["ok"] for r in records), records
        # Without the key every request fails (401); the two users back off (0.5 s, 1 s, 2 s...)
        # instead of retrying at once, so 3 s bring a handful of requests, not hundreds.
        code, records, _ = locust(
            tmp_path, "--host", f"http://{server.address}", "-u", "2", "-r", "2", "--run-time", "3s",
        )  # fmt: skip
    finally:
        server.close()
    assert code != 0
    assert 2 <= len(records) <= 12, len(records)
    assert all("401" in r["error"] for r in records)


def test_a_stop_file_ends_the_run_early_and_lets_requests_in_flight_finish(
    servers: list[ChatServer], tmp_path: Path
) -> None:
    records, summary, stop = tmp_path / "records.jsonl", tmp_path / "summary.json", tmp_path / "stop"
    started = time.monotonic()
    proc = subprocess.Popen(
        [LOCUST, "-f", str(LOCUSTFILE), "--headless", "--only-summary", "--records", str(records),
         "--summary-json", str(summary), "--stop-timeout", "10", "--host", f"http://{servers[0].address}",
         "--plan", "60s:3", "--spawn-rate", "10", "--max-output-tokens", "30", "--stop-file", str(stop)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            records.exists() and len(records.read_text().splitlines()) >= 5
        ):
            time.sleep(0.2)
        stop.touch()
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert code == 0
    assert time.monotonic() - started < 40, "the run went on after the stop file appeared"
    assert len(lines) >= 5
    assert all(r["ok"] for r in lines), "requests in flight at the stop were cut off"
    assert json.loads(summary.read_text())["ok"] == len(lines)
