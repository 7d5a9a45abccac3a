"""The benchmark (`make bench`): a small end-to-end run, and how it reads the curves and compares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qwen_tools.sim import bench, run, tune
from qwen_tools.sim.score import summarize
from tests.conftest import ROOT


def test_quick_benchmark_writes_iso_slo_tables_and_pareto_plots(tmp_path: Path) -> None:
    code = bench.main(
        [
            "--quick",
            "--seeds",
            "2",
            "--workers",
            "2",
            "--policies",
            "ours,hpa",
            "--traces",
            str(ROOT / "bench" / "traces"),
            "--out",
            str(tmp_path),
            "--tuned",
            str(ROOT / "bench" / "results" / "tuned.json"),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    (scenario,) = data["scenarios"].values()
    assert scenario["seeds"] == 2
    assert set(scenario["policies"]) == {"ours", "hpa"}
    ours = scenario["policies"]["ours"]
    tuned = json.loads((ROOT / "bench" / "results" / "tuned.json").read_text())["tuned"]["a10g"]
    assert ours["tuned"] == tuned["ours"]["chosen"], "scored at the committed tuned setting"
    assert len(ours["curve"]) == 6, "and along its whole tuning curve"
    at = ours["at_tuned"]["slo_attainment"]
    assert at["low"] <= at["mean"] <= at["high"]
    refs = scenario["references"]
    assert refs["reference"]["gpu_hours"]["mean"] <= refs["oracle"]["gpu_hours"]["mean"] + 1e-9
    for stats in (*scenario["policies"].values(), refs["reference"]):
        gpu_h = (
            stats["gpu_hours_at_slo"]["mean"] if "gpu_hours_at_slo" in stats else stats["gpu_hours"]["mean"]
        )
        assert math.isnan(gpu_h) or gpu_h >= scenario["lower_bound_gpu_hours"], "nothing beats the bound"
    assert scenario["ours_vs_best_peer"]["best_peer"] in ("hpa", None)
    assert data["meta"]["traces"]["conv"]["sha256"] == bench.TRACES["conv"][1]
    table = (tmp_path / "results.md").read_text()
    assert "| ours" in table
    assert "GPU-h at the SLO" in table
    assert "Ours against the best tuned peer" in table
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
    assert list(tmp_path.glob("timeline-*.png"))
    assert "--merge" not in table
    # One policy re-run into the same results: the others' runs are kept, and the header says so.
    common = ["--quick", "--seeds", "2", "--workers", "2", "--traces", str(ROOT / "bench" / "traces")]
    tuned_file = str(ROOT / "bench" / "results" / "tuned.json")
    assert (
        bench.main([*common, "--policies", "hpa", "--merge", "--out", str(tmp_path), "--tuned", tuned_file])
        == 0
    )
    merged = json.loads((tmp_path / "results.json").read_text())
    (again,) = merged["scenarios"].values()
    assert set(again["policies"]) == {"ours", "hpa"}
    assert (
        "for hpa (`--merge`: the other policies' runs kept from an earlier one)"
        in (tmp_path / "results.md").read_text()
    )


def test_gpu_hours_at_the_slo_are_read_from_the_curve() -> None:
    # (GPU-hours, attainment): 99% lies 2/3 of the way from (2, 0.97) to (3, 1.0).
    gpu_h, how = bench.gpu_hours_at_slo([(4.0, 1.0), (2.0, 0.97), (3.0, 1.0), (1.0, 0.9)])
    assert (round(gpu_h, 6), how) == (round(2 + 2 / 3, 6), "interpolated")
    assert bench.gpu_hours_at_slo([(2.0, 0.995), (3.0, 1.0)]) == (2.0, "at most")
    nan, how = bench.gpu_hours_at_slo([(2.0, 0.95), (3.0, 0.98)])
    assert math.isnan(nan)
    assert how == "not reached"


def test_ours_is_compared_with_the_cheapest_peer_reaching_the_slo_on_every_seed() -> None:
    iso = {
        "ours": {0: 2.0, 1: 2.2, 2: 2.1},
        "hpa": {0: 2.5, 1: 2.6, 2: 2.55},
        "kpa": {0: 1.0, 1: math.nan, 2: 1.0},  # cheaper, but misses on one seed: not a rival
    }
    win = bench.versus(iso, [0, 1, 2])
    assert win["best_peer"] == "hpa"
    assert win["verdict"] == "win"
    assert win["ratio"]["high"] < 1
    lose = bench.versus({**iso, "ours": {0: 3.0, 1: 3.1, 2: 3.2}}, [0, 1, 2])
    assert lose["verdict"] == "lose"
    tie = bench.versus({**iso, "ours": {0: 2.0, 1: 2.9, 2: 2.55}}, [0, 1, 2])
    assert tie["verdict"] == "tie"
    missed = bench.versus({**iso, "ours": {0: 2.0, 1: math.nan, 2: 2.0}}, [0, 1, 2])
    assert missed["verdict"] == "lose"


def test_a_curve_is_the_main_knob_at_every_level_with_the_rest_as_tuned() -> None:
    tuned = {"chosen": {"target": 27.0, "windows": [240.0, 180.0]}}
    points = bench.curve("kpa", tuned)
    assert [c["target"] for c in points] == list(tune.TARGETS)
    assert {tuple(c["windows"]) for c in points} == {(240.0, 180.0)}


def test_held_out_scenarios_use_none_of_the_training_requests() -> None:
    traces = ROOT / "bench" / "traces"
    conv = bench.build_trace("conv", traces, 0)
    first = tune.training_traces(conv, 0)["conv-first-half"]
    second = bench.build_trace("conv2", traces, 0)
    assert len(first) + len(second) == len(conv)
    assert {s.trace.partition("-")[0] for s in bench.SCENARIOS} <= {"conv2", "code"}


@pytest.mark.parametrize("variant", ["diurnal4", "flash", "long"])
def test_synthetic_held_out_traces_are_labelled(variant: str) -> None:
    assert bench.build_trace(f"conv2-{variant}", ROOT / "bench" / "traces", 1).synthetic


@pytest.mark.parametrize("scenario", bench.SCENARIOS, ids=lambda s: s.name)
def test_each_scenario_allows_enough_replicas_for_its_slo(scenario: run.Scenario) -> None:
    """The largest static fleet the scenario allows meets the SLO on seed 0 (flat 2 s, else the
    length-scaled target): the comparison is about scaling, not about a cap too low to serve the load."""
    requests = bench.build_trace(scenario.trace, ROOT / "bench" / "traces", 0)
    top = run.run_policy(requests, scenario, f"static:{scenario.max_replicas}", 0)
    target, _ = run.target_for(top, scenario)
    assert summarize(top, target).slo_attainment >= run.GOAL
