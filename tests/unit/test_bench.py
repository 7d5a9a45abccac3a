"""A small end-to-end run of the benchmark (`make bench --quick`): one 15-minute slice, two seeds."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_operator.sim import bench, policies
from tests.conftest import ROOT


def test_quick_benchmark_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    code = bench.main(
        [
            "--quick",
            "--seeds",
            "2",
            "--workers",
            "2",
            "--traces",
            str(ROOT / "bench" / "traces"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    (scenario,) = data["scenarios"].values()
    assert scenario["seeds"] == 2
    assert set(scenario["policies"]) == {"static-best", "static-max", *policies.POLICIES, "oracle"}
    ours = scenario["policies"]["ours"]
    assert ours["slo_attainment"]["low"] <= ours["slo_attainment"]["mean"] <= ours["slo_attainment"]["high"]
    assert scenario["policies"]["oracle"]["gpu_hours_vs_oracle"] == 1.0
    for stats in scenario["policies"].values():
        assert stats["gpu_hours_vs_lower_bound"] >= 1.0, "nothing beats the provable lower bound"
    assert len(data["runs"]) == 2
    assert data["meta"]["traces"]["conv"]["sha256"] == bench.TRACES["conv"][1]
    table = (tmp_path / "results.md").read_text()
    assert "| ours" in table
    assert "| oracle" in table
    assert (tmp_path / "slo-vs-gpu-hours.png").stat().st_size > 10_000
    assert list(tmp_path.glob("timeline-*.png"))
