"""`make demo`, shortened: the real operator scales simulated vLLM pods on the embedded API."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qwen_tools import demo
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_a_short_demo_scales_up_and_prints_the_story(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    before = dict(os.environ)
    png = tmp_path / "demo.png"
    # Eight minutes of the conversation trace at 40x (its rise in about two): a 150 s cold start takes 4 s.
    code = demo.main(["--minutes", "8", "--speed", "40", "--row-seconds", "1", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "desired" in out
    assert "sim time" in out, "the time column says it is simulated time"
    assert "TooManyReplicas" not in out, "reasons in words"
    assert "AboveTarget" not in out, "reasons in words"
    assert "scaling up" in out or "at max" in out or "pods starting" in out
    # The first scale-up is SLO mode's decision, on the token load. Its size depends on when the
    # evaluation falls: at 40x an evaluation interval is 0.4 s of wall time, and on a loaded machine one
    # that comes late sees more of the rise (2 -> 4 under the full suite on 2 cores, 2 -> 3 alone).
    assert re.search(r"ScaledUp: 2 -> \d+: load ", out), out[-3000:]
    # What the first rows show is told before they appear: a warm start, and the load's shape.
    assert out.index("starts with 2 warm replicas") < out.index("sim time")
    assert out.index("a third of them until minute") < out.index("sim time")
    table = out.split("sim time", 1)[1].splitlines()
    first_row = table[2].split()  # after the header's rest and its rule
    assert first_row[2:4] == ["2", "2"], f"desired and ready at the start: {first_row}"
    last_word = out.split("The scaler's last word")[1]
    assert "TTFT <= 2 s for" in last_word, "SLO mode decides, on the first tokens the simulated pods report"
    assert "replicas' worth, a replica carrying" in last_word, last_word
    assert not re.search(r"\d\.\d{2,}", last_word), f"rounded numbers: {last_word}"
    assert png.stat().st_size > 10_000
    assert dict(os.environ) == before, "the demo leaves the environment as it found it"
