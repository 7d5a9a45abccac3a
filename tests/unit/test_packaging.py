"""What ships where: the runtime distribution (the operator image installs it) carries no tooling, and
its CLI says where the tooling verbs are when they are absent."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qwen_operator import cli
from tests.conftest import ROOT

TOOLING_DEPENDENCIES = ("matplotlib", "tqdm", "kmock", "locust", "helm-python-sdk", "qwen-operator-tools")


def test_the_runtime_wheel_holds_only_the_operator_package_and_runtime_dependencies(tmp_path: Path) -> None:
    # Build from a copy, so the build's own folders land in this test's directory, not the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "operator" / "qwen_operator", src / "operator" / "qwen_operator")
    shutil.copytree(ROOT / "tools", src / "tools")  # present beside it, as in the repository
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=src,
        check=True,
        capture_output=True,
        text=True,
    )
    # The license in its current form (an SPDX expression): no deprecation warning on a first install.
    assert "deprecat" not in (built.stdout + built.stderr).lower(), built.stdout + built.stderr
    (wheel,) = tmp_path.glob("qwen_operator-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert packages == {"qwen_operator"}, packages
    assert "qwen_operator/handlers.py" in names
    assert not [n for n in names if "/sim/" in n or "emulator" in n or "demo" in n or "loadtest" in n]
    # What `pip install` of the wheel pulls in (the extras are the repository's test and lint tools).
    requires = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert any("kopf" in r for r in requires)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    for dep in TOOLING_DEPENDENCIES:
        assert not [r for r in requires if dep in r], (dep, requires)


def test_without_the_tooling_its_verbs_say_where_to_get_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    code = cli.main(["simulate", "--trace", "bench/traces/AzureLLMInferenceTrace_conv.csv"])
    assert code == 2
    assert "tooling, which the operator image does not include" in capsys.readouterr().err


def test_with_the_tooling_installed_its_verbs_are_on_the_cli() -> None:
    verbs = cli.parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"run", "render", "crds", "simulate", "manifests"} <= set(verbs)


def test_make_help_lists_every_target() -> None:
    """Every target the Makefile declares (.PHONY) is in `make help`, with its line of help (a target
    name with a digit, such as e2e, was left out)."""
    makefile = (ROOT / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:")).split()[1:]
    shown = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True)
    listed = [
        re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0] for line in shown.stdout.splitlines() if line.strip()
    ]
    assert sorted(listed) == sorted(phony)
