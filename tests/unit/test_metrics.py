"""Parsing vLLM's /metrics (real 0.32 captures) and the shape of the batched Prometheus queries."""

from __future__ import annotations

import pytest

from qwen_operator.metrics import parse_vllm_metrics, queries
from tests.conftest import DATA
from tests.fakevllm import render


@pytest.mark.parametrize(
    ("capture", "running", "waiting", "kv"),
    [
        ("idle", 0, 0, 0.0),
        ("under-load", 7, 24, 0.2047),
        ("kv-pressure", 20, 12, 0.9606),
    ],
)
def test_real_vllm_captures(capture: str, running: float, waiting: float, kv: float) -> None:
    sample = parse_vllm_metrics((DATA / f"vllm-0.32-metrics-{capture}.txt").read_text())
    assert sample is not None
    assert (sample.running, sample.waiting) == (running, waiting)
    assert sample.kv_cache_usage == pytest.approx(kv, abs=1e-4)


def test_engines_are_summed_and_kv_averaged() -> None:
    sample = parse_vllm_metrics(render(running=6, waiting=4, kv=0.5, engines=2))
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_cache_usage) == (6, 4, 0.5)


def test_older_vllm_kv_name_is_read() -> None:
    text = render(running=1, waiting=0, kv=0.3, old_kv_name=True)
    assert "vllm:kv_cache_usage_perc" not in text
    sample = parse_vllm_metrics(text)
    assert sample is not None
    assert sample.kv_cache_usage == pytest.approx(0.3)


def test_model_filter_and_missing_families() -> None:
    text = (DATA / "vllm-0.32-metrics-under-load.txt").read_text()
    assert parse_vllm_metrics(text, model_name="another-model") is None
    assert parse_vllm_metrics("# nothing from vLLM here\nup 1\n") is None


def test_not_the_exposition_format_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_vllm_metrics("<html><body>502 Bad Gateway</body></html>")


def test_one_query_per_signal_grouped_by_namespace_pod_and_service() -> None:
    q = queries("serving_qwenops_io_service")
    assert set(q) == {"running", "waiting", "kv", "timestamp"}
    for promql in q.values():
        assert "by (namespace, pod, serving_qwenops_io_service)" in promql
    assert "vllm:gpu_cache_usage_perc" in q["kv"]
    assert "vllm:kv_cache_usage_perc" in q["kv"]
