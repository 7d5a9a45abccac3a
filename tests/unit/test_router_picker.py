"""The router's pure parts: picking an engine, naming a prompt's prefix, reading EndpointSlices."""

from __future__ import annotations

from collections import Counter

import pytest

from qwen_router.__main__ import parser
from qwen_router.endpoints import ready_engines
from qwen_router.picker import CHARS_PER_TOKEN, Pending, Picker, prefix_of


def picker(n: int) -> Picker:
    p = Picker()
    p.update({f"e{i}": f"http://10.0.0.{i}:8000" for i in range(n)})
    return p


def test_without_a_prefix_the_engine_with_the_least_prompt_work_ahead_takes_it() -> None:
    p = picker(3)
    p.engines["e0"].outstanding, p.engines["e1"].outstanding, p.engines["e2"].outstanding = 4, 2, 3
    pick = p.pick()
    assert pick is not None
    assert (pick.engine.name, pick.reason) == ("e1", "least"), "nothing pending: the fewest requests"
    Pending(p.engines["e1"], 30_000 // CHARS_PER_TOKEN)  # a long prompt it has not answered yet
    assert p.pick().engine.name == "e2"  # type: ignore[union-attr]
    p.engines["e0"].outstanding = 3
    p.engines["e0"].kv, p.engines["e2"].kv = 0.1, 0.9  # equal otherwise: the emptier KV cache
    assert p.pick().engine.name == "e0"  # type: ignore[union-attr]


def test_a_prompt_counts_as_pending_until_its_first_byte() -> None:
    p = picker(1)
    engine = p.engines["e0"]
    sent = Pending(engine, 100)
    assert engine.pending == 100
    sent.done()
    sent.done()  # its end, after its first byte: counted off once
    assert engine.pending == 0


def test_a_new_prefix_goes_to_the_least_loaded_engine_and_its_next_requests_follow_it() -> None:
    p = picker(4)
    p.engines["e0"].outstanding, p.engines["e1"].outstanding = 3, 3
    p.engines["e2"].outstanding, p.engines["e3"].outstanding = 1, 2
    first = p.pick(prefix="system: you are a helpful assistant")
    assert first is not None
    assert (first.engine.name, first.reason) == ("e2", "least"), "nothing of it is cached anywhere yet"
    favourite = first.engine
    favourite.outstanding, p.engines["e3"].outstanding = 2, 1  # e3 is less loaded, e2 holds the blocks
    again = p.pick(prefix="system: you are a helpful assistant")
    assert again is not None
    assert (again.engine, again.reason) == (favourite, "prefix")
    # Other new prefixes spread as the load does (the app counts what it sends).
    spread = Counter()
    for i in range(400):
        pick = p.pick(prefix=f"app {i}")
        assert pick is not None
        pick.engine.outstanding += 1
        spread[pick.engine.name] += 1
    assert len(spread) == 4
    assert min(spread.values()) > 90
    # Loaded past 1.25 x the mean: the least loaded engine takes it and becomes a second home.
    favourite.outstanding = 10
    for e in p.engines.values():
        if e is not favourite:
            e.outstanding = 2
    p.engines["e0"].outstanding = 1
    other = p.pick(prefix="system: you are a helpful assistant")
    assert other is not None
    assert (other.engine.name, other.reason) == ("e0", "overflow")
    p.engines["e0"].outstanding = 3  # the busier of the two homes, but within its bound: still a home
    home = p.pick(prefix="system: you are a helpful assistant")
    assert home is not None
    assert (home.engine.name, home.reason) == ("e0", "prefix")
    favourite.outstanding = 2
    assert p.pick(prefix="system: you are a helpful assistant").engine is favourite  # type: ignore[union-attr]


def test_a_prefix_whose_engine_went_goes_to_the_least_loaded_and_the_memory_is_bounded() -> None:
    p = picker(3)
    p.engines["e0"].outstanding, p.engines["e1"].outstanding, p.engines["e2"].outstanding = 0, 5, 5
    assert p.pick(prefix="shared").engine.name == "e0"  # type: ignore[union-attr]
    p.update({"e1": "http://10.0.0.1:8000", "e2": "http://10.0.0.2:8000"})
    p.engines["e2"].outstanding = 1
    gone = p.pick(prefix="shared")
    assert gone is not None
    assert (gone.engine.name, gone.reason) == ("e2", "least")
    assert p.pick(prefix="shared", exclude=["e2"]).engine.name == "e1"  # type: ignore[union-attr]
    small = Picker(kept=3)
    small.update({"e0": "u0", "e1": "u1"})
    for i in range(10):
        small.pick(prefix=f"text {i}")
    assert len(small._sent) == 3


def test_a_session_header_wins_over_the_prefix() -> None:
    p = picker(8)
    by_session = {p.pick(session="conv-42", prefix=f"turn {i}").engine.name for i in range(20)}  # type: ignore[union-attr]
    assert len(by_session) == 1


def test_an_engine_that_comes_or_goes_moves_only_its_share_of_sessions() -> None:
    p = picker(4)
    before = {i: p.pick(session=f"s{i}").engine.name for i in range(1000)}  # type: ignore[union-attr]
    p.update({**{n: e.url for n, e in p.engines.items()}, "e4": "http://10.0.0.4:8000"})
    after = {i: p.pick(session=f"s{i}").engine.name for i in range(1000)}  # type: ignore[union-attr]
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
