"""The router's pure parts: picking an engine, naming a prompt's prefix, reading EndpointSlices."""

from __future__ import annotations

from collections import Counter

import pytest
from qwen_router.__main__ import parser
from qwen_router.endpoints import ready_engines
from qwen_router.picker import Picker, prefix_of


def picker(n: int) -> Picker:
    p = Picker()
    p.update({f"e{i}": f"http://10.0.0.{i}:8000" for i in range(n)})
    return p


def test_without_a_prefix_the_least_loaded_engine_takes_it_kv_cache_weighing_in() -> None:
    p = picker(3)
    p.engines["e0"].outstanding, p.engines["e1"].outstanding, p.engines["e2"].outstanding = 4, 2, 3
    pick = p.pick()
    assert pick is not None
    assert (pick.engine.name, pick.reason) == ("e1", "least")
    p.engines["e1"].kv = 0.95  # 2 x 1.95 > 3 x 1.0
    p.engines["e2"].kv = 0.0
    assert p.pick().engine.name == "e2"  # type: ignore[union-attr]


def test_a_prefix_goes_to_its_engine_until_that_one_is_over_its_bound() -> None:
    p = picker(4)
    first = p.pick(prefix="system: you are a helpful assistant")
    assert first is not None
    assert first.reason == "prefix"
    favourite = first.engine
    assert all(p.pick(prefix="system: you are a helpful assistant").engine is favourite for _ in range(5))  # type: ignore[union-attr]
    # Other prefixes spread over the engines.
    spread = Counter(p.pick(prefix=f"app {i}").engine.name for i in range(400))  # type: ignore[union-attr]
    assert len(spread) == 4
    assert min(spread.values()) > 60
    # Loaded past 1.25 x the mean: the next engine in the prefix's order takes it.
    favourite.outstanding = 10
    for e in p.engines.values():
        if e is not favourite:
            e.outstanding = 2
    other = p.pick(prefix="system: you are a helpful assistant")
    assert other is not None
    assert other.engine is not favourite
    assert other.reason == "overflow"


def test_a_session_header_wins_over_the_prefix() -> None:
    p = picker(8)
    by_session = {p.pick(session="conv-42", prefix=f"turn {i}").engine.name for i in range(20)}  # type: ignore[union-attr]
    assert len(by_session) == 1


def test_an_engine_that_comes_or_goes_moves_only_its_share_of_prefixes() -> None:
    p = picker(4)
    before = {i: p.pick(prefix=f"p{i}").engine.name for i in range(1000)}  # type: ignore[union-attr]
    p.update({**{n: e.url for n, e in p.engines.items()}, "e4": "http://10.0.0.4:8000"})
    after = {i: p.pick(prefix=f"p{i}").engine.name for i in range(1000)}  # type: ignore[union-attr]
    moved = [i for i in before if before[i] != after[i]]
    assert all(after[i] == "e4" for i in moved), "only to the new engine"
    assert 120 < len(moved) < 280, "about a fifth"
    assert p.pick(exclude=[f"e{i}" for i in range(5)]) is None


def test_an_engine_that_stays_keeps_its_outstanding_count() -> None:
    p = picker(2)
    p.engines["e0"].outstanding = 3
    p.update({"e0": "http://10.0.0.0:8000"})
    assert p.engines["e0"].outstanding == 3
    assert set(p.engines) == {"e0"}


def test_the_prefix_of_a_chat_and_of_a_completion() -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert prefix_of(chat) == "system:Be brief.\nuser:Hi\n"
    parts = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url"}]}]
    }
    assert prefix_of(parts) == "user:A\n"
    assert prefix_of({"prompt": "x" * 5000}) == "x" * 1024
    assert prefix_of({"prompt": ["first", "second"]}) == "first"
    assert prefix_of({"model": "m"}) is None
    assert prefix_of({"messages": ["not a message"]}) is None


def test_ready_engines_from_endpoint_slices() -> None:
    slices = [
        {
            "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}],
            "endpoints": [
                {"addresses": ["10.1.0.5"], "conditions": {"ready": True}, "targetRef": {"name": "qwen-a"}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": False}, "targetRef": {"name": "qwen-b"}},
                {"addresses": ["10.1.0.7"], "conditions": {"ready": True, "terminating": True}},
                {"addresses": [], "conditions": {"ready": True}},
            ],
        },
        {
            "ports": [{"name": "http", "port": 8000}],
            "endpoints": [{"addresses": ["fd00::9"], "conditions": {}}],
        },
    ]
    assert ready_engines(slices, "http", 1234) == {
        "fd00::9": "http://[fd00::9]:8000",
        "qwen-a": "http://10.1.0.5:8000",
    }
    assert ready_engines([{"endpoints": [{"addresses": ["10.1.0.8"]}]}], None, 1234) == {
        "10.1.0.8": "http://10.1.0.8:1234"
    }


def test_the_command_line_names_its_mistakes() -> None:
    args = parser().parse_args(["--engine", "a=http://10.0.0.1:8000/", "--engine", "b=http://10.0.0.2:8000"])
    assert args.engine == [("a", "http://10.0.0.1:8000"), ("b", "http://10.0.0.2:8000")]
    for bad in (["--engine", "10.0.0.1:8000"], ["--engine", "a=ftp://x"], []):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)
    with pytest.raises(SystemExit):
        parser().parse_args(["--service", "s", "--engine", "a=http://x:1"])


def test_an_engine_s_kv_cache_usage_is_read_from_vllm_s_own_page() -> None:
    """The real vLLM 0.32 captures: idle, under load and under KV pressure; the name before 0.12 too;
    a page without either (or with a nonsense figure) is no reading."""
    from qwen_router.app import kv_usage

    from tests.conftest import DATA

    names = ("idle", "under-load", "kv-pressure")
    pages = {n: (DATA / f"vllm-0.32-metrics-{n}.txt").read_text() for n in names}
    assert kv_usage(pages["idle"]) == 0.0
    assert kv_usage(pages["under-load"]) == pytest.approx(0.2047, abs=1e-4)
    assert kv_usage(pages["kv-pressure"]) == pytest.approx(0.9606, abs=1e-4)
    old = (
        'vllm:gpu_cache_usage_perc{engine="0",model_name="q"} 0.5\n'
        'vllm:gpu_cache_usage_perc{engine="1",model_name="q"} 0.7\n'
    )
    assert kv_usage(old) == pytest.approx(0.6)
    assert kv_usage("vllm:num_requests_running 3\n") is None
    assert kv_usage("vllm:kv_cache_usage_perc 7\n") is None
    assert kv_usage("vllm:kv_cache_usage_percentile 0.5\n") is None, "another metric of a longer name"


def test_what_an_engine_reports_counts_with_what_this_router_sent_it() -> None:
    """Another router replica loaded e0 (it reports 6 running and waiting, of which this router sent
    none): the least loaded is e1, and a prefix whose favourite is e0 overflows past it."""
    from qwen_router.app import queued

    from tests.conftest import DATA

    assert queued((DATA / "vllm-0.32-metrics-kv-pressure.txt").read_text()) == 32.0  # 20 running, 12 waiting
    assert queued("vllm:num_requests_waiting_by_reason 3\n") == 0.0
    p = picker(2)
    text = next(f"text {i}" for i in range(100) if p.pick(prefix=f"text {i}").engine.name == "e0")  # type: ignore[union-attr]
    p.engines["e0"].reported = 6
    p.engines["e1"].outstanding = 2
    pick = p.pick()
    assert pick is not None
    assert pick.engine.name == "e1", "the least loaded, counting what e0 reports"
    overflow = p.pick(prefix=text)
    assert overflow is not None
    assert (overflow.engine.name, overflow.reason) == ("e1", "overflow")
