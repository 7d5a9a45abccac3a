"""qwen-operator tune: one replica's capacity at the SLO from a load test's records or a Prometheus range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qwen_operator import api, cli
from qwen_tools import fit

A10G = (6000.0, 820.0)


def step(t0: float, n: int, missed: int = 0) -> list[dict[str, object]]:
    """``n`` requests in a minute from ``t0`` (1,000 prompt and 200 output tokens each), ``missed`` of
    them with a first token after 3 s."""
    out = []
    for i in range(n):
        start = t0 + 60 * i / n
        ttft = 3.0 if i < missed else 0.4
        out.append(
            {
                "start": start,
                "first_token": start + ttft,
                "end": start + ttft + 1.0,
                "prompt_tokens": 1000,
                "output_tokens": 200,
                "ttft": ttft,
                "ok": True,
                "error": None,
            }
        )
    return out


def work(n: int) -> float:
    return (n * 1000 / 60) / A10G[0] + (n * 200 / 60) / A10G[1]


RECORDS = (
    step(0, 30)
    + step(60, 60)
    + step(120, 90)  # the heaviest that holds
    + step(180, 120, missed=6)  # 5% late: the overload starts
    + step(240, 150, missed=75)
    + step(300, 180)  # a lucky window after it: it must not count
)


def test_the_capacity_is_the_heaviest_load_below_the_first_miss() -> None:
    found = fit.windows(RECORDS, 2.0, 60, A10G)
    assert [w.requests for w in found] == [30, 60, 90, 120, 150, 180]
    result = fit.fit(found, 99, A10G)
    assert result.capped_by is found[3], "the first window that failed by more than twice the allowance"
    assert result.capacity == pytest.approx(work(90), rel=0.05)
    # At the test's own mix the block's capacity is exactly one replica's worth.
    per_second_prompt, per_second_generated = 90 * 1000 / 60, 90 * 200 / 60
    assert result.prompt_tokens_per_second is not None
    assert result.generation_tokens_per_second is not None
    used = (
        per_second_prompt / result.prompt_tokens_per_second
        + per_second_generated / result.generation_tokens_per_second
    )
    assert used == pytest.approx(1.0, rel=0.05)


def test_the_block_is_a_valid_slo_and_the_cli_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in RECORDS))
    code = cli.main(["tune", "--records", str(records), "--gpu-product", "NVIDIA-A10G"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "<- overload: from here on left out" in out.err
    spec = yaml.safe_load(out.out)["spec"]["autoscaling"]
    slo = api.LatencySLO.model_validate(spec["slo"])
    assert slo.time_to_first_token_seconds == 2
    assert slo.replica_capacity is not None
    assert slo.replica_capacity.prompt_tokens_per_second == pytest.approx(A10G[0] * work(90), rel=0.05)


def test_the_percentile_is_over_all_requests_not_each_window() -> None:
    """A window with 2 of 120 late (98.3%) among on-time ones does not cap the fit on its own."""
    records = step(0, 60) + step(60, 120, missed=2) + step(120, 150) + step(180, 180, missed=40)
    result = fit.fit(fit.windows(records, 2.0, 60, A10G), 99, A10G)
    assert result.capacity == pytest.approx(work(150), rel=0.05)


def test_a_test_that_never_met_the_slo_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in step(0, 60, missed=30)))
    assert cli.main(["tune", "--records", str(records)]) == 1
    assert "the lightest windows already missed the SLO" in capsys.readouterr().err


def matrix(pods: dict[str, list[float]], **labels: str) -> list[dict[str, object]]:
    """A range answer: per pod, one value a minute (at 60, 120, ...)."""
    return [
        {"metric": {"pod": pod, **labels}, "values": [[60.0 * (i + 1), str(v)] for i, v in enumerate(values)]}
        for pod, values in pods.items()
    ]


def test_windows_from_a_prometheus_range_are_per_pod_and_histogram_shares() -> None:
    """Two pods, three minutes: the token load is split over the pods that reported, the attainment is
    the TTFT histogram's share within the bound (estimated in its bucket as the scaler does), a NaN step
    is skipped."""
    buckets = {  # le -> per minute, summed over the pods
        "1.0": [100, 50, float("nan")],
        "2.5": [100, 60, float("nan")],
        "+Inf": [100, 100, float("nan")],
    }
    answers = {
        "prompt_tokens": matrix({"a": [60_000, 90_000, 60_000], "b": [60_000, 90_000, 60_000]}),
        "generation_tokens": matrix({"a": [12_000, 18_000, 12_000], "b": [12_000, 18_000, 12_000]}),
        "ttft": [item for le, v in buckets.items() for item in matrix({"": v}, le=le)],
    }
    found = fit.from_prometheus(answers, 2.0, 60, A10G)
    assert [(w.start, w.requests) for w in found] == [(0, 100), (60, 100)]
    assert found[0].prompt_tokens_per_second == 2000
    assert found[0].generation_tokens_per_second == 400
    assert found[0].work == pytest.approx((2000 / A10G[0] + 400 / A10G[1]) / 2)
    assert found[0].attainment == 1.0
    # Half above 1 s, halving every second below it: 75% within 2 s, capped by the 60% within 2.5 s.
    assert found[1].attainment == pytest.approx(0.6)
    result = fit.fit(found, 99, A10G)
    assert result.capacity == pytest.approx(found[0].work)


def test_tune_from_prometheus_needs_the_service_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tune", "--prometheus", "http://127.0.0.1:9"]) == 2
    assert "--service NAMESPACE/NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["tune", "--prometheus", "http://127.0.0.1:9", "--records", "x.jsonl"])


def slow_decoding(records: list[dict[str, object]], t0: float, share: float) -> list[dict[str, object]]:
    """The records with a mean time per output token of 30 ms, and 80 ms for ``share`` of the requests
    started in the minute from ``t0``."""
    window = [r for r in records if t0 <= float(r["start"]) < t0 + 60]  # type: ignore[arg-type]
    slow = {id(r) for r in window[: round(share * len(window))]}
    return [{**r, "tpot": 0.08 if id(r) in slow else 0.03} for r in records]


def test_a_tpot_bound_fits_below_the_first_window_that_decoded_too_slowly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """First tokens hold up to 90 requests a minute; decoding slows at 90 already (5% over 50 ms)."""
    records = slow_decoding(RECORDS, 120, 0.05)
    without = fit.fit(fit.windows(records, 2.0, 60, A10G), 99, A10G)
    assert without.capacity == pytest.approx(work(90), rel=0.05), "without the bound TPOT is not judged"
    bounded = fit.fit(fit.windows(records, 2.0, 60, A10G, tpot_bound=0.05), 99, A10G)
    assert bounded.capacity == pytest.approx(work(60), rel=0.05)
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert cli.main(["tune", "--records", str(path), "--tpot", "0.05", "--gpu-product", "NVIDIA-A10G"]) == 0
    slo = api.LatencySLO.model_validate(yaml.safe_load(capsys.readouterr().out)["spec"]["autoscaling"]["slo"])
    assert slo.time_per_output_token_seconds == 0.05
    assert slo.replica_capacity is not None
    assert slo.replica_capacity.prompt_tokens_per_second == pytest.approx(A10G[0] * work(60), rel=0.05)


def test_a_prometheus_range_judges_the_tpot_histogram_too() -> None:
    """With a TPOT bound a window's share is the lower of its first tokens' and its decodes'."""
    one = {"1.0": [100, 100], "2.5": [100, 100], "+Inf": [100, 100]}
    decodes = {"0.025": [80, 40], "0.05": [80, 50], "0.075": [80, 80], "+Inf": [80, 80]}
    answers = {
        "prompt_tokens": matrix({"a": [60_000, 60_000]}),
        "generation_tokens": matrix({"a": [12_000, 12_000]}),
        "ttft": [item for le, v in one.items() for item in matrix({"": v}, le=le)],
        "tpot": [item for le, v in decodes.items() for item in matrix({"": v}, le=le)],
    }
    assert [w.attainment for w in fit.from_prometheus(answers, 2.0, 60, A10G)] == [1.0, 1.0]
    found = fit.from_prometheus(answers, 2.0, 60, A10G, tpot_bound=0.05)
    assert [w.attainment for w in found] == [1.0, pytest.approx(50 / 80)]
